"""Entry point: parse flags, build the settings once, run one command, map errors to exit codes."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from medsam2.cli import (
    checkpoint_cmd,
    dataset_cmd,
    evaluate_cmd,
    export_cmd,
    finetune_cmd,
    pacs_cmd,
    reference_cmd,
    segment_cmd,
    serve_cmd,
    versions_cmd,
)
from medsam2.cli.exit_codes import exit_code_for
from medsam2.errors import Medsam2Error
from medsam2.settings import add_settings_arguments, settings_from

COMMANDS = (
    checkpoint_cmd,
    export_cmd,
    segment_cmd,
    serve_cmd,
    pacs_cmd,
    reference_cmd,
    dataset_cmd,
    evaluate_cmd,
    finetune_cmd,
    versions_cmd,
)


def build_parser() -> argparse.ArgumentParser:
    """The full ``medsam2`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="medsam2",
        description="MedSAM2 serving: checkpoints, stage-graph export and verification, segmentation.",
    )
    add_settings_arguments(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``medsam2`` and return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_from(args)
        logging.basicConfig(level=settings.log_level, format="%(levelname)s %(name)s: %(message)s")
        return int(args.run(args, settings) or 0)
    except Medsam2Error as exc:
        print(f"medsam2 {args.command}: error: {exc}", file=sys.stderr)
        return exit_code_for(exc)
    except KeyboardInterrupt:
        print(f"medsam2 {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
