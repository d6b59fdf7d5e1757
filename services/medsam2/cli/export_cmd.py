"""``medsam2 export`` and ``medsam2 verify``."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from medsam2.cli.exit_codes import FAILED_CHECK, OK
from medsam2.models.extras import require_export_extra
from medsam2.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``export`` and ``verify`` commands."""
    exp = sub.add_parser("export", help="export the stage graphs and write a Triton model repository")
    exp.add_argument("--checkpoint", type=Path, required=True, help="MedSAM2 checkpoint (published format)")
    exp.add_argument("--out", type=Path, required=True, help="model repository folder to write")
    exp.add_argument(
        "--backend",
        choices=["onnxruntime", "tensorrt"],
        default="onnxruntime",
        help="Triton backend of the repository [onnxruntime]",
    )
    exp.add_argument("--max-batch", type=int, default=16, help="largest batch the graphs and engines accept [16]")
    exp.add_argument(
        "--version",
        type=int,
        default=None,
        help="model version N: writes OUT/<graph>/N/ for every graph and ensemble, next to the "
        "versions already there (an existing N is refused) [1, replaced]",
    )
    exp.set_defaults(run=run_export)

    ver = sub.add_parser("verify", help="compare every ONNX graph with the sam2 PyTorch modules")
    ver.add_argument("--checkpoint", type=Path, required=True, help="MedSAM2 checkpoint (published format)")
    ver.add_argument(
        "--onnx-dir", type=Path, default=None, help="folder with <stage>.onnx files to check (default: export afresh)"
    )
    ver.add_argument("--seed", type=int, default=0, help="seed of the comparison inputs [0]")
    ver.add_argument("--json", action="store_true", help="print the report as JSON")
    ver.set_defaults(run=run_verify)


def run_export(args: argparse.Namespace, settings: Settings) -> int:
    """Export graphs (and TensorRT engines) into a Triton model repository."""
    exporter = require_export_extra("medsam2_export.repository_export")
    started = time.perf_counter()
    written = exporter.export_repository(
        args.checkpoint, args.out, args.backend, max_batch=args.max_batch, version=args.version
    )
    for path in written:
        print(path)
    print(f"exported {args.backend} model repository to {args.out} in {time.perf_counter() - started:.1f} s")
    return OK


def run_verify(args: argparse.Namespace, settings: Settings) -> int:
    """Print each stage's worst error against PyTorch; fail above the tolerance."""
    verify = require_export_extra("medsam2_export.verify")
    report = verify.verify(args.checkpoint, onnx_dir=args.onnx_dir, seed=args.seed, threads=settings.threads or None)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        for stage, outputs in report.stages.items():
            for name, err in outputs.items():
                print(f"{stage:18s} {name:22s} {err:.3e}")
        print(f"worst {report.max_abs_err:.3e} (tolerance {verify.TOLERANCE:.0e})")
    return OK if report.max_abs_err <= verify.TOLERANCE else FAILED_CHECK
