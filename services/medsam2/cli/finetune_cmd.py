"""``medsam2 finetune``: adapt a checkpoint to labelled npz cases with MedSAM2's recipe (needs the export extra)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from medsam2.errors import InvalidInput
from medsam2.models.extras import require_export_extra
from medsam2.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``finetune`` command."""
    ft = sub.add_parser("finetune", help="fine-tune a checkpoint on MedSAM2 npz cases (torch; torchrun for DDP)")
    ft.add_argument("--checkpoint", type=Path, required=True, help="base checkpoint (published format)")
    ft.add_argument(
        "--dataset",
        type=Path,
        required=True,
        help="folder of MedSAM2 npz cases (imgs, gts, spacing), e.g. one written by SaveAnnotation",
    )
    ft.add_argument("--out", type=Path, required=True, help="the fine-tuned checkpoint to write (NEW.pt)")
    length = ft.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help="optimiser steps (one clip each) [100]")
    length.add_argument("--epochs", type=float, help="passes over the dataset, counted in clips per object")
    ft.add_argument(
        "--freeze-encoder",
        action="store_true",
        help="train memory and decoder parts on cached image features (CPU-friendly site adaptation)",
    )
    ft.add_argument(
        "--annotation-round",
        action="store_true",
        help="halve the learning rates (3e-5 encoder, 5e-5 rest), as for the paper's annotation rounds",
    )
    ft.add_argument(
        "--lr-scale",
        type=float,
        default=1.0,
        metavar="X",
        help="multiply both learning rates by X: the paper's suit trained weights; an untrained start needs ~20 [1]",
    )
    ft.add_argument("--clip-length", type=int, default=8, help="consecutive slices or frames per clip [8]")
    ft.add_argument("--jitter", type=float, default=10.0, metavar="PX", help="box jitter, 0..PX pixels [10]")
    ft.add_argument("--no-augment", action="store_true", help="no flips, affine or intensity jitter")
    ft.add_argument("--seed", type=int, default=0, help="seed [0]")
    ft.add_argument("--save-every", type=int, default=50, help="steps between resumable states [50]")
    ft.add_argument("--resume", action="store_true", help="continue from OUT.train-state")
    ft.add_argument("--json", action="store_true", help="print the run's summary as JSON")
    ft.add_argument("--no-progress", action="store_true", help="no progress bar")
    ft.set_defaults(run=run_finetune)


def _steps(args: argparse.Namespace) -> int:
    if args.steps is not None:
        return args.steps
    if args.epochs is None:
        return 100
    if args.epochs <= 0:
        raise InvalidInput(f"--epochs must be positive, got {args.epochs}")
    from medsam2.datasets.training_npz import list_cases, read_training_case

    objects = sum(len(read_training_case(p).labels) for p in list_cases(args.dataset))
    return max(1, round(args.epochs * objects))


def run_finetune(args: argparse.Namespace, settings: Settings) -> int:
    """Check everything, train, write NEW.pt with its provenance."""
    trainer = require_export_extra("medsam2_export.finetune.trainer")
    if settings.threads:
        import torch

        torch.set_num_threads(settings.threads)
    options = trainer.FinetuneOptions(
        steps=_steps(args),
        clip_length=args.clip_length,
        freeze_encoder=args.freeze_encoder,
        annotation_round=args.annotation_round,
        lr_scale=args.lr_scale,
        jitter_px=args.jitter,
        augment=not args.no_augment,
        seed=args.seed,
        save_every=args.save_every,
    )
    # Under torchrun every rank runs this command; only rank 0 reports (it alone writes the outputs).
    reporting = int(os.environ.get("RANK", "0")) == 0
    progress = None
    if not args.no_progress and reporting:
        from tqdm import tqdm

        progress = tqdm(total=options.steps, unit="step", desc="fine-tuning")

    def on_step(step: int, loss: float) -> None:
        if progress is not None:
            progress.n = step
            progress.set_postfix(loss=f"{loss:.4f}")
            progress.refresh()

    try:
        result = trainer.finetune(args.checkpoint, args.dataset, args.out, options, resume=args.resume, on_step=on_step)
    finally:
        if progress is not None:
            progress.close()
    if not reporting:
        return 0
    summary = {
        "out": str(result.out),
        "steps": result.steps,
        "seconds": round(result.seconds, 1),
        "first_loss": result.losses[0] if result.losses else None,
        "last_loss": result.losses[-1] if result.losses else None,
        "dataset_sha256": result.dataset_sha256,
        "base_checkpoint_sha256": result.base_checkpoint_sha256,
    }
    if args.json:
        print(json.dumps(summary | {"losses": result.losses}))
    else:
        print(
            f"fine-tuned {result.steps} steps in {result.seconds:.0f} s: loss {summary['first_loss']:.4f} -> "
            f"{summary['last_loss']:.4f} -> {result.out}"
        )
    return 0
