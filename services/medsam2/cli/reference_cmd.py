"""``medsam2 parity`` and ``medsam2 bench``: the engine against sam2's predictor (needs the export extra)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from medsam2.cli.exit_codes import FAILED_CHECK, OK
from medsam2.errors import BackendUnavailable, InvalidInput
from medsam2.models.extras import require_export_extra
from medsam2.models.source import graphs_for_checkpoint
from medsam2.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``parity`` and ``bench`` commands."""
    par = sub.add_parser("parity", help="compare the engine with sam2's video predictor on a synthetic volume")
    par.add_argument("--checkpoint", type=Path, required=True, help="MedSAM2 checkpoint (use an 'objects present' one)")
    par.add_argument("--graphs", type=Path, help="exported graphs to use (default: export and cache)")
    par.add_argument("--seed", type=int, default=0, help="seed of the synthetic volume [0]")
    par.add_argument("--slices", type=int, default=12, help="slices in the synthetic volume [12]")
    par.add_argument("--json", action="store_true", help="print the report as JSON")
    par.add_argument("--steps", action="store_true", help="include every compared frame in the JSON")
    par.set_defaults(run=run_parity)

    ben = sub.add_parser("bench", help="seconds per propagated slice: each backend against sam2, in one run")
    ben.add_argument("--checkpoint", type=Path, required=True, help="MedSAM2 checkpoint")
    ben.add_argument("--graphs", type=Path, help="exported graphs to use (default: export and cache)")
    ben.add_argument("--slices", type=int, default=40, help="slices in the synthetic volume [40]")
    ben.add_argument("--size", type=int, default=512, help="rows and columns of each slice, as a CT slice [512]")
    ben.add_argument(
        "--backends",
        help="comma list of onnxruntime, openvino, openvino-mixed, openvino-bf16, torch-cpu-fp32, "
        "torch-cuda-fp32, torch-cuda-bf16 [every CPU path this machine offers: onnxruntime, "
        "and openvino, openvino-mixed and openvino-bf16 where OpenVINO is installed and the CPU "
        "has bf16]",
    )
    ben.add_argument(
        "--agreement-slices",
        type=int,
        default=16,
        help="slices of the parity volume on which reduced precision is compared with fp32 [16]",
    )
    ben.add_argument("--reference-device", default="cpu", help="device of the sam2 reference [cpu]")
    ben.add_argument("--rounds", type=int, default=2, help="alternating rounds of reference and backends [2]")
    ben.add_argument("--json", action="store_true", help="print the report as JSON")
    ben.set_defaults(run=run_bench)


PARITY_LOGIT_TOLERANCE = 1e-3
PARITY_MASK_TOLERANCE = 1e-3


def run_parity(args: argparse.Namespace, settings: Settings) -> int:
    """Print the worst logit and mask differences; fail above the tolerances."""
    parity = require_export_extra("medsam2_export.parity")
    from medsam2.backends.onnxruntime_backend import OnnxRuntimeBackend

    graphs = args.graphs or graphs_for_checkpoint(args.checkpoint, settings)
    backend = OnnxRuntimeBackend(graphs, threads=settings.threads)
    report = parity.run_parity(backend, args.checkpoint, seed=args.seed, slices=args.slices)
    out = report.to_json(with_steps=args.steps)
    print(
        json.dumps(out, indent=2)
        if args.json
        else f"{out['frames']} frames, {out['objects']} objects: max logit diff {out['max_abs_logit_diff']:.2e}, "
        f"max mask disagreement {out['max_mask_disagreement']:.2e}"
    )
    ok = report.max_abs_logit_diff <= PARITY_LOGIT_TOLERANCE and report.max_mask_disagreement <= PARITY_MASK_TOLERANCE
    return OK if ok else FAILED_CHECK


def run_bench(args: argparse.Namespace, settings: Settings) -> int:
    """Time propagation per slice for each backend and for the reference, in this one process."""
    backends = _bench_backends(args.backends)
    if args.slices < 3 or args.size < 32 or args.rounds < 1 or args.agreement_slices < 4:
        # Fewer slices or pixels leave the synthetic volume's second lesion off the key slice.
        raise InvalidInput("bench needs --slices >= 3, --size >= 32, --rounds >= 1 and --agreement-slices >= 4")
    bench = require_export_extra("medsam2_export.bench")
    graphs = args.graphs or graphs_for_checkpoint(args.checkpoint, settings)
    report = bench.run_bench(
        args.checkpoint,
        graphs,
        backends=backends,
        slices=args.slices,
        size=args.size,
        threads=settings.threads or None,
        reference_device=args.reference_device,
        rounds=args.rounds,
        agreement_slices=args.agreement_slices,
    )
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"reference: {report['reference_s_per_slice']:.3f} s/slice")
        for name, row in report["backends"].items():
            agreement = (
                f", mask Dice vs fp32 {row['mask_dice_vs_fp32']:.4f}, max logit diff "
                f"{row['max_abs_logit_diff_vs_fp32']:.2e}"
                if "mask_dice_vs_fp32" in row
                else ""
            )
            print(
                f"{name}: {row['s_per_slice']:.3f} s/slice ({row['ratio_vs_reference']:.2f}x reference, "
                f"{row['fraction_of_peak']:.0%} of {row['precision']} peak{agreement})"
            )
    return OK


BENCH_BACKENDS = (
    "onnxruntime",
    "openvino",
    "openvino-bf16",
    "openvino-mixed",
    "torch-cpu-fp32",
    "torch-cuda-fp32",
    "torch-cuda-bf16",
)


def _bench_backends(text: str | None) -> list[str]:
    """The ``--backends`` list, checked; by default every CPU path this machine offers."""
    if text is not None:
        names = [b.strip() for b in text.split(",") if b.strip()]
        unknown = [n for n in names if n not in BENCH_BACKENDS]
        if unknown or not names:
            raise InvalidInput(f"--backends takes a comma list of {', '.join(BENCH_BACKENDS)}, got {text!r}")
        return names
    names = ["onnxruntime"]
    try:
        from medsam2.backends.openvino_backend import cpu_capabilities

        capabilities = cpu_capabilities()
    except BackendUnavailable:
        return names
    names.append("openvino")
    if "BF16" in capabilities:
        names += ["openvino-mixed", "openvino-bf16"]
    return names
