"""``medsam2 serve`` and ``medsam2 client``."""

from __future__ import annotations

import argparse
import logging
import os

from medsam2.cli import client_cmd
from medsam2.server.config import ServerSettings
from medsam2.settings import Settings, add_arguments, resolve

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``serve`` and ``client`` commands."""
    serve = sub.add_parser("serve", help="run the gRPC session service (embedded ONNX Runtime, or Triton)")
    add_arguments(serve, ServerSettings, "server settings")
    serve.set_defaults(run=run_serve)

    client_cmd.register(sub)


def run_serve(args: argparse.Namespace, settings: Settings) -> int:
    """Serve until a signal, then drain."""
    from medsam2.server.app import make_backend, serve_forever

    server_settings = resolve(ServerSettings, args)
    return serve_forever(server_settings, make_backend(server_settings, settings.threads), environ=os.environ)
