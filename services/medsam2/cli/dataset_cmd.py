"""``medsam2 dataset synthetic``: write the project's labelled synthetic dataset."""

from __future__ import annotations

import argparse
from pathlib import Path

from medsam2.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``dataset`` command group."""
    ds = sub.add_parser("dataset", help="labelled datasets for evaluate and finetune")
    kinds = ds.add_subparsers(dest="dataset_command", required=True, metavar="KIND")
    syn = kinds.add_parser("synthetic", help="CT-like volumes with lesion-like blobs and short videos, as npz")
    syn.add_argument("--out", type=Path, required=True, help="folder to write the npz cases into")
    syn.add_argument("--volumes", type=int, default=8, help="CT-like volumes [8]")
    syn.add_argument("--videos", type=int, default=2, help="ultrasound-like videos [2]")
    syn.add_argument("--slices", type=int, default=24, help="slices per volume [24]")
    syn.add_argument("--frames", type=int, default=16, help="frames per video [16]")
    syn.add_argument("--size", type=int, default=96, help="rows and columns of each slice [96]")
    syn.add_argument("--seed", type=int, default=0, help="seed [0]")
    syn.set_defaults(run=run_synthetic)


def run_synthetic(args: argparse.Namespace, settings: Settings) -> int:
    """Write the synthetic dataset and list the files."""
    from medsam2.datasets.synthetic import SyntheticOptions, write_synthetic_dataset
    from medsam2.errors import InvalidInput

    if min(args.volumes, args.videos) < 0 or args.volumes + args.videos == 0:
        raise InvalidInput("--volumes and --videos must be >= 0, and at least one case is needed")
    if args.slices < 8 or args.frames < 8 or args.size < 32:
        raise InvalidInput("--slices and --frames must be >= 8 (one training clip) and --size >= 32")
    options = SyntheticOptions(
        volumes=args.volumes, videos=args.videos, slices=args.slices, size=args.size, frames=args.frames, seed=args.seed
    )
    for path in write_synthetic_dataset(args.out, options):
        print(path)
    return 0
