"""What padding memory banks to a fixed capacity costs on the CPU (embedded ONNX Runtime).

``TrackerOptions.memory_slots`` pads every bank with empty, masked-out slots so that Triton can batch sessions
whose banks differ in size. On the CPU nothing is batched across sessions, so the padding is pure extra attention
work. This tracks one synthetic volume with and without padding, alternating runs so that background load slows
both alike, and prints seconds per propagated slice and the largest logit difference (expected: 0 up to rounding).

    .venv/bin/python benchmarks/memory_padding.py --onnx-dir DIR [--slices 8] [--runs 2] [--slots 10]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from medsam2.backends.onnxruntime_backend import OnnxRuntimeBackend
from medsam2.engine.prompts import Box
from medsam2.engine.tracker import Direction, Tracker, TrackerOptions
from medsam2.graphs import MAX_MEMORY_SLOTS


def volume(slices: int, size: int = 96, seed: int = 0) -> np.ndarray:
    """A noisy uint8 volume with a bright disc in the middle of every slice."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:size, 0:size]
    disc = (rows - size / 2) ** 2 + (cols - size / 2) ** 2 <= (size / 6) ** 2
    out = rng.normal(60, 12, (slices, size, size)) + 120 * disc
    return np.clip(out, 0, 255).astype(np.uint8)


def track(backend: OnnxRuntimeBackend, frames: np.ndarray, slots: int) -> tuple[float, np.ndarray]:
    """Seconds per propagated slice and the logits of every slice, for one padding setting."""
    tracker = Tracker(backend, frames, TrackerOptions(fill_hole_area=0, memory_slots=slots))
    size = frames.shape[1]
    tracker.add_prompt(1, 0, box=Box(size / 3 - 2, size / 3 - 2, 2 * size / 3 + 2, 2 * size / 3 + 2))
    logits = np.zeros((frames.shape[0], 128, 128), np.float32)
    start = time.perf_counter()
    for result in tracker.propagate(Direction.FORWARD, start=0):
        logits[result.frame] = result.low_res[0]
    return (time.perf_counter() - start) / (frames.shape[0] - 1), logits


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx-dir", type=Path, required=True, help="folder of <stage>.onnx files")
    parser.add_argument("--slices", type=int, default=8, help="slices in the volume [8]")
    parser.add_argument("--runs", type=int, default=2, help="runs per setting [2]")
    parser.add_argument("--slots", type=int, default=MAX_MEMORY_SLOTS, help=f"padded capacity [{MAX_MEMORY_SLOTS}]")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads [2]")
    args = parser.parse_args(argv)
    backend = OnnxRuntimeBackend(args.onnx_dir, args.threads)
    frames = volume(args.slices)
    loadavg = os.getloadavg()
    seconds: dict[int, list[float]] = {0: [], args.slots: []}
    logits: dict[int, np.ndarray] = {}
    for _ in range(args.runs):
        for slots, times in seconds.items():
            s, logits[slots] = track(backend, frames, slots)
            times.append(s)
    plain, padded = (float(np.median(seconds[k])) for k in seconds)
    print(
        json.dumps(
            {
                "slices": args.slices,
                "runs": args.runs,
                "threads": args.threads,
                "s_per_slice_unpadded": plain,
                f"s_per_slice_padded_to_{args.slots}": padded,
                "padded_over_unpadded": padded / plain,
                "max_abs_logit_diff": float(np.max(np.abs(logits[0] - logits[args.slots]))),
                "loadavg_before": loadavg,
                "loadavg_after": os.getloadavg(),
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
