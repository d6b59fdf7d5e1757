"""``medsam2 finetune``: adapt a checkpoint to labelled data (MedSAM2's recipe), in the export toolchain."""

from __future__ import annotations

import argparse
from pathlib import Path

from medsam2.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``finetune`` command."""
    ft = sub.add_parser("finetune", help="fine-tune a checkpoint on MedSAM2 npz cases (needs the export extra)")
    ft.set_defaults(run=run_finetune)


def run_finetune(args: argparse.Namespace, settings: Settings) -> int:
    """Placeholder until the trainer lands."""
    return 1
