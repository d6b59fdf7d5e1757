"""``medsam2 checkpoint random|download|list``."""

from __future__ import annotations

import argparse
from pathlib import Path

from medsam2.models.download import download_checkpoint, list_checkpoints
from medsam2.models.extras import require_export_extra
from medsam2.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``checkpoint`` command group."""
    parser = sub.add_parser("checkpoint", help="make, download or list checkpoints")
    group = parser.add_subparsers(dest="checkpoint_command", required=True, metavar="ACTION")

    rnd = group.add_parser(
        "random", help="write a seeded UNTRAINED checkpoint in the published format (tests, development)"
    )
    rnd.add_argument("--seed", type=int, required=True, help="random seed")
    rnd.add_argument(
        "--objects",
        choices=["present", "absent", "random"],
        default="present",
        help="bias of the object-score head: +10 (present), -10 (absent) or left random [present]",
    )
    rnd.add_argument("--out", type=Path, required=True, help="checkpoint file to write")
    rnd.set_defaults(run=run_random)

    dl = group.add_parser("download", help="download a published MedSAM2 checkpoint, with progress and checksum")
    dl.add_argument("name", help="checkpoint name, e.g. MedSAM2_latest (see 'medsam2 checkpoint list')")
    dl.add_argument("--out", type=Path, required=True, help="folder to write the checkpoint into")
    dl.add_argument("--sha256", default=None, help="expected sha256 of the file (otherwise the server's is used)")
    dl.add_argument("--timeout", type=float, default=30.0, help="network timeout in seconds [30]")
    dl.set_defaults(run=run_download)

    ls = group.add_parser("list", help="list the published checkpoints")
    ls.set_defaults(run=run_list)


def run_random(args: argparse.Namespace, settings: Settings) -> int:
    """Write a random checkpoint."""
    model = require_export_extra("medsam2_export.model")
    result = model.write_random_checkpoint(args.seed, args.out, args.objects)
    print(
        f"wrote UNTRAINED checkpoint {result.path} (seed {result.seed}, objects {result.objects.value}, "
        f"{result.num_tensors} tensors): for tests only, its masks are meaningless"
    )
    return 0


def run_download(args: argparse.Namespace, settings: Settings) -> int:
    """Download a published checkpoint."""
    result = download_checkpoint(
        args.name,
        args.out,
        base_url=settings.checkpoint_base_url,
        expected_sha256=args.sha256,
        timeout_s=args.timeout,
    )
    print(result.summary())
    return 0


def run_list(args: argparse.Namespace, settings: Settings) -> int:
    """Print the published checkpoints."""
    for ckpt in list_checkpoints():
        print(f"{ckpt.name:36s} {ckpt.description}")
    return 0
