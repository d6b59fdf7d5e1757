"""Seconds per slice of the image encoder on this CPU: the exported ONNX graph in ONNX Runtime vs sam2 in PyTorch.

Both sides get the same thread count, batch 1 and the same slice; runs alternate
between the two backends so that a noisy machine slows both alike.  Prints one
JSON object.  Needs the export toolchain (``scripts/bootstrap.sh``).

    .venv/bin/python benchmarks/encoder_bench.py [--checkpoint CKPT] [--onnx-dir DIR] [--threads 2] [--runs 10]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from medsam2.graphs import IMAGE_SIZE, Stage
from medsam2_export.model import load_model, write_random_checkpoint
from medsam2_export.onnx_export import export_graph, find_graph
from medsam2_export.wrappers.image_encoder import IMAGENET_MEAN, IMAGENET_STD

RANDOM_SEED = 2026


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The benchmark's flags."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="MedSAM2 checkpoint (default: an untrained random one in a temporary folder)",
    )
    parser.add_argument(
        "--onnx-dir",
        type=Path,
        default=None,
        help="folder with image_encoder.onnx or a model repository (default: export afresh)",
    )
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads for both backends [2]")
    parser.add_argument("--runs", type=int, default=10, help="timed runs per backend [10]")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs per backend first [2]")
    parser.add_argument("--seed", type=int, default=0, help="seed of the input slice [0]")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.runs < 1 or args.warmup < 0:
        parser.error("--threads and --runs must be >= 1, --warmup >= 0")
    return args


def ort_encoder(path: Path, threads: int) -> Callable[[np.ndarray], list[np.ndarray]]:
    """A callable running the exported image encoder in ONNX Runtime on the CPU."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    return lambda image: session.run(None, {"image": image})


def torch_encoder(model: torch.nn.Module) -> Callable[[torch.Tensor], list[torch.Tensor]]:
    """A callable running sam2's ``forward_image`` in eager PyTorch."""

    def run(x: torch.Tensor) -> list[torch.Tensor]:
        with torch.inference_mode():
            return model.forward_image(x)["backbone_fpn"]

    return run


def normalised(image: np.ndarray) -> torch.Tensor:
    """The float input sam2 sees for a grey uint8 slice (the ONNX graph does this inside)."""
    x = torch.from_numpy(np.repeat(image, 3, axis=1) / 255.0).float()
    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def timed(fn: Callable[[], object]) -> float:
    """Wall seconds of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def summary(times: list[float]) -> dict[str, float]:
    """Median (reported as s_per_slice), min and max of one backend's runs."""
    return {
        "s_per_slice": statistics.median(times),
        "median": statistics.median(times),
        "min": min(times),
        "max": max(times),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its JSON report."""
    args = parse_args(argv)
    load_before = os.getloadavg()[0]
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="medsam2-bench-") as tmp:
        checkpoint = args.checkpoint
        if checkpoint is None:
            checkpoint = write_random_checkpoint(RANDOM_SEED, Path(tmp) / "untrained.pt").path
        model = load_model(checkpoint)
        if args.onnx_dir is not None:
            graph = find_graph(args.onnx_dir, Stage.IMAGE_ENCODER)
        else:
            graph = export_graph(model, Stage.IMAGE_ENCODER, Path(tmp) / "image_encoder.onnx")
        run_ort = ort_encoder(graph, args.threads)
        run_torch = torch_encoder(model)

        image = np.random.default_rng(args.seed).integers(0, 256, (1, 1, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
        x = normalised(image)
        backends: dict[str, Callable[[], object]] = {
            "onnxruntime": lambda: run_ort(image),
            "pytorch": lambda: run_torch(x),
        }
        for _ in range(args.warmup):
            for fn in backends.values():
                fn()
        times: dict[str, list[float]] = {name: [] for name in backends}
        order = list(backends)
        for i in range(args.runs):
            # Alternate which backend goes first, so neither always runs right after the other's cache traffic.
            for name in order if i % 2 == 0 else order[::-1]:
                times[name].append(timed(backends[name]))

        # A benchmark of a wrong graph means nothing: check the outputs agree before reporting.
        agree = max(float(np.max(np.abs(o - r.numpy()))) for o, r in zip(run_ort(image), run_torch(x), strict=False))

    ours, ref = summary(times["onnxruntime"]), summary(times["pytorch"])
    report = {
        "stage": Stage.IMAGE_ENCODER.value,
        "batch": 1,
        "threads": args.threads,
        "runs": args.runs,
        "warmup": args.warmup,
        "onnxruntime": ours,
        "pytorch": ref,
        "ratio_onnxruntime_over_pytorch": ours["median"] / ref["median"],
        "ratio_min": ours["min"] / ref["min"],
        "max_abs_diff": agree,
        "versions": {"onnxruntime": ort.__version__, "torch": torch.__version__, "python": platform.python_version()},
        # Other work on the machine skews both sides; the load says how quiet it was.
        "cpu": {
            "machine": platform.machine(),
            "logical_cores": os.cpu_count(),
            "load_1m_before": load_before,
            "load_1m_after": os.getloadavg()[0],
        },
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
