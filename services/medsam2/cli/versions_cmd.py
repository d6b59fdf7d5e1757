"""``medsam2 versions``: which model versions a running service serves, and (admins) which one new sessions get."""

from __future__ import annotations

import argparse
import json

from medsam2.errors import InvalidInput
from medsam2.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``versions`` command."""
    cmd = sub.add_parser(
        "versions",
        help="show a running service's model versions; --switch makes one current (admins, SetModelVersion)",
    )
    cmd.add_argument("--server", required=True, metavar="HOST:PORT", help="the service's gRPC address")
    cmd.add_argument("--token", default="", help="bearer token, if the server wants one")
    cmd.add_argument(
        "--switch",
        metavar="N|newest",
        help="serve version N (or the newest in the repository) to new sessions; open sessions keep theirs",
    )
    cmd.add_argument("--json", action="store_true", help="print the result as JSON")
    cmd.set_defaults(run=run_versions)


def _target(switch: str | None) -> int | None:
    """The version ``--switch`` asks for: None for no switch, 0 for the newest."""
    if switch is None:
        return None
    if switch == "newest":
        return 0
    if not switch.isdigit() or int(switch) < 1:
        raise InvalidInput(f"--switch takes a version number (1, 2, ...) or 'newest', got {switch!r}")
    return int(switch)


def run_versions(args: argparse.Namespace, settings: Settings) -> int:
    """Ask the server (and switch, when told); print the versions and the current one."""
    from medsam2.api.client import Client
    from medsam2.cli.client_cmd import server_calls

    target = _target(args.switch)  # a bad value fails before any call
    client = Client(args.server, token=args.token)
    with server_calls(client):
        info = client.server_info() if target is None else client.set_model_version(target)
    summary = {
        "server": args.server,
        "versions": list(info.model_versions),
        "current": info.model.version,
        "checkpoint_sha256": info.model.checkpoint_sha256,
        "switched": target is not None,
    }
    if args.json:
        print(json.dumps(summary))
    else:
        served = ", ".join(str(v) for v in summary["versions"]) or "one unversioned model"
        verb = "now serves" if target is not None else "serves"
        print(
            f"{args.server} {verb} version {summary['current']} to new sessions "
            f"(model {info.model.short_sha or 'unknown'}); versions: {served}"
        )
    return 0
