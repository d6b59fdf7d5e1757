"""GPU check: the torch backend on CUDA against the CPU, and its speed with 1, 8 and 32 concurrent sessions.

Needs only CUDA torch and this project (not TensorRT, not Triton). It runs the
tracker (the service's own engine) over synthetic volumes with the torch stage
wrappers (``medsam2_export.torch_backend``) and writes one JSON file with:

- ``agreement``: for fp32 and bf16 (autocast) on the device, the worst
  low-resolution logit difference against the same volume tracked in fp32 on
  the CPU, and the mask agreement (fraction of equal pixels, and Dice);
- ``throughput``: for each concurrency, slices per second and p50/p99 seconds
  per slice, every session propagating its own volume on its own thread. The
  stage calls of all sessions go through one micro-batcher that merges calls of
  the same stage and shapes, as Triton's dynamic batcher does; within a session
  the tracker batches objects as it always does;
- ``peak_gpu_memory_bytes`` per part (CUDA only).

Sized to finish within 5 minutes on one H100/H200. ``--device cpu`` runs the
same code on the CPU (for CI); asking for CUDA where there is none fails at once
with exit code 2.

    python scripts/gpu_check.py --out gpu_check.json [--checkpoint MedSAM2_latest.pt]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

EXIT_NO_DEVICE = 2
PRECISIONS = ("fp32", "bf16")


# ---------------------------------------------------------------------------------------------
# Synthetic studies


def synthetic_volume(seed: int, slices: int, size: int = 96) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """A uint8 volume with a bright ellipsoid that drifts from slice to slice, and a box around it on the key slice."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    volume = rng.normal(60, 12, (slices, size, size))
    centre = np.array([size / 2, size / 2]) + rng.uniform(-8, 8, 2)
    radius = size / 6
    for k in range(slices):
        c = centre + k * np.array([0.6, -0.4])
        r = radius * (1 - 0.5 * abs(k - slices // 2) / max(slices, 1))
        inside = ((rows - c[0]) ** 2 + (cols - c[1]) ** 2) <= r**2
        volume[k][inside] += 120
    key = slices // 2
    c = centre + key * np.array([0.6, -0.4])
    box = (float(c[1] - radius - 2), float(c[0] - radius - 2), float(c[1] + radius + 2), float(c[0] + radius + 2))
    return np.clip(volume, 0, 255).astype(np.uint8), box


# ---------------------------------------------------------------------------------------------
# Cross-session batching


@dataclass
class _Call:
    stage: Any
    inputs: Mapping[str, np.ndarray]
    future: Future = field(default_factory=Future)

    @property
    def signature(self) -> tuple:
        return (self.stage, tuple((k, v.shape[1:], v.dtype.str) for k, v in sorted(self.inputs.items())))

    @property
    def rows(self) -> int:
        return next(iter(self.inputs.values())).shape[0]


class MicroBatcher:
    """Merges concurrent ``run`` calls of one stage with equal non-batch shapes into one call, like Triton does."""

    name = "micro-batched"

    def __init__(self, backend: Any, *, max_batch: int = 32, max_wait_s: float = 0.0005) -> None:
        self._backend = backend
        self.precision = getattr(backend, "precision", "")  # test doubles may have none
        self.fused_track_step = False  # it merges single stages; a fused step would hide them from the batcher
        self.max_batch, self.max_wait_s = max_batch, max_wait_s
        self._pending: list[_Call] = []
        self._cv = threading.Condition()
        self._closed = False
        self.batches = self.calls = 0
        self._worker = threading.Thread(target=self._loop, daemon=True)
        self._worker.start()

    def run(self, stage: Any, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Queue one call and wait for its own rows of the merged result."""
        call = _Call(stage, inputs)
        with self._cv:
            self._pending.append(call)
            self._cv.notify()
        return call.future.result()

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._pending and not self._closed:
                    self._cv.wait()
                if self._closed and not self._pending:
                    return
            time.sleep(self.max_wait_s)  # let the other sessions' calls of this step arrive
            with self._cv:
                first = self._pending[0]
                group, rows = [], 0
                for call in list(self._pending):
                    if call.signature == first.signature and rows + call.rows <= self.max_batch:
                        group.append(call)
                        rows += call.rows
                for call in group:
                    self._pending.remove(call)
            self._run_group(group)

    def _run_group(self, group: list[_Call]) -> None:
        try:
            merged = {k: np.concatenate([c.inputs[k] for c in group]) for k in group[0].inputs}
            out = self._backend.run(group[0].stage, merged)
        except BaseException as exc:
            for call in group:
                call.future.set_exception(exc)
            return
        self.batches += 1
        self.calls += len(group)
        start = 0
        for call in group:
            call.future.set_result({k: v[start : start + call.rows] for k, v in out.items()})
            start += call.rows

    def close(self) -> None:
        """Stop the worker once the queue is empty."""
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._worker.join()


# ---------------------------------------------------------------------------------------------
# Measurements


def track(
    backend: Any,
    volume: np.ndarray,
    box: tuple[float, float, float, float],
    on_slice: Callable[[], None] | None = None,
    on_prompted: Callable[[], None] | None = None,
) -> np.ndarray:
    """Low-resolution logits [slices, 128, 128] of one object tracked both ways from the key slice.

    ``on_slice`` is called after every tracked slice (the prompted key slice, decoded once, is not one).
    """
    from medsam2.engine.prompts import Box
    from medsam2.engine.tracker import Direction, Tracker, TrackerOptions

    tracker = Tracker(backend, volume, TrackerOptions(fill_hole_area=0))
    key = volume.shape[0] // 2
    logits = np.zeros((volume.shape[0], 128, 128), np.float32)
    logits[key] = tracker.add_prompt(1, key, box=Box(*box)).low_res[0]
    if on_prompted is not None:
        on_prompted()
    for result in tracker.propagate(Direction.BOTH, start=key):
        logits[result.frame] = result.low_res[0]
        if on_slice is not None and result.frame != key:
            on_slice()
    return logits


def agreement(got: np.ndarray, want: np.ndarray) -> dict[str, float]:
    """Worst logit difference, fraction of pixels whose mask (logit > 0) agrees, and the masks' Dice."""
    a, b = got > 0, want > 0
    total = a.sum() + b.sum()
    return {
        "max_abs_logit_diff": float(np.max(np.abs(got - want))),
        "mask_agreement": float(np.mean(a == b)),
        "mask_dice": float(2 * np.logical_and(a, b).sum() / total) if total else 1.0,
    }


def throughput(backend: Any, sessions: int, slices: int, seed: int) -> dict[str, Any]:
    """``sessions`` threads, each tracking its own volume through one shared micro-batcher."""
    batcher = MicroBatcher(backend)
    studies = [synthetic_volume(seed + s, slices) for s in range(sessions)]
    latencies: list[float] = []
    lock = threading.Lock()
    errors: list[BaseException] = []
    barrier = threading.Barrier(sessions)

    def session(volume: np.ndarray, box: tuple[float, float, float, float]) -> None:
        last = [0.0]

        def tick() -> None:
            now = time.perf_counter()
            with lock:
                latencies.append(now - last[0])
            last[0] = now

        def start_clock() -> None:
            last[0] = time.perf_counter()

        try:
            barrier.wait()
            # The clock starts after the prompt, so each latency is one propagated slice (both passes start at
            # the key slice, which is not re-tracked).
            track(batcher, volume, box, tick, start_clock)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=session, args=study) for study in studies]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    batcher.close()
    if errors:
        raise errors[0]
    return {
        "sessions": sessions,
        "slices": len(latencies),
        "wall_s": wall,
        "slices_per_s": len(latencies) / wall,
        "p50_s_per_slice": float(np.percentile(latencies, 50)),
        "p99_s_per_slice": float(np.percentile(latencies, 99)),
        "mean_stage_calls_per_batch": batcher.calls / max(batcher.batches, 1),
    }


# ---------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="JSON file to write [gpu_check.json]")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help="MedSAM2 checkpoint (default: a seeded untrained one with the object head biased present)",
    )
    parser.add_argument("--device", default="cuda", help="torch device to check [cuda]; cpu for a dry run")
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument("--parity-slices", type=int, default=12, help="slices of the agreement volume [12]")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32], help="sessions at once [1 8 32]")
    parser.add_argument("--slices", type=int, default=24, help="slices per session volume in the throughput runs [24]")
    parser.add_argument(
        "--throughput-precision",
        choices=PRECISIONS,
        default="bf16",
        help="precision of the throughput runs [bf16, MedSAM2's own]",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if min(args.concurrency) < 1 or args.slices < 2 or args.parity_slices < 2:
        parser.error("--concurrency must be >= 1, --slices and --parity-slices >= 2")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the check and write the JSON file; exit 2 when the device is not there."""
    args = parse_args(argv)
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            f"gpu_check: device {args.device} was asked for, but torch {torch.__version__} sees no CUDA device "
            f"(torch.version.cuda={torch.version.cuda}); install a CUDA build of torch on a GPU machine, "
            "or pass --device cpu for a dry run",
            file=sys.stderr,
        )
        return EXIT_NO_DEVICE
    try:
        device = torch.device(args.device)
        torch.empty(1, device=device)
    except (RuntimeError, ValueError) as exc:
        print(f"gpu_check: device {args.device} is not usable: {exc}", file=sys.stderr)
        return EXIT_NO_DEVICE
    args.out.parent.mkdir(parents=True, exist_ok=True)

    from medsam2_export.model import write_random_checkpoint
    from medsam2_export.torch_backend import TorchBackend

    on_cuda = device.type == "cuda"
    started = time.perf_counter()
    report: dict[str, Any] = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if on_cuda else platform.processor() or "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
    }

    peaks: list[int] = []

    def peak_and_reset() -> int | None:
        if not on_cuda:
            return None
        torch.cuda.synchronize(device)
        peaks.append(int(torch.cuda.max_memory_allocated(device)))
        torch.cuda.reset_peak_memory_stats(device)
        return peaks[-1]

    with tempfile.TemporaryDirectory(prefix="medsam2-gpu-check-") as tmp:
        checkpoint = args.checkpoint or write_random_checkpoint(2026, Path(tmp) / "untrained.pt", "present").path
        report["checkpoint"] = (
            "untrained (seed 2026, object head present)" if args.checkpoint is None else str(args.checkpoint)
        )
        volume, box = synthetic_volume(7, args.parity_slices)
        reference_backend = TorchBackend(checkpoint, device="cpu", precision="fp32", threads=args.threads)
        reference = track(reference_backend, volume, box)
        reference_backend.close()

        report["agreement"] = {}
        backends: dict[str, Any] = {}
        for precision in args.precisions:
            backend = TorchBackend(checkpoint, device=str(device), precision=precision, threads=args.threads)
            backends[precision] = backend
            peak_and_reset()
            t0 = time.perf_counter()
            logits = track(backend, volume, box)
            seconds = time.perf_counter() - t0
            report["agreement"][precision] = {
                **agreement(logits, reference),
                "slices": args.parity_slices,
                "s_per_slice_single_session": seconds / args.parity_slices,
                "peak_gpu_memory_bytes": peak_and_reset(),
            }

        precision = args.throughput_precision
        backend = backends.get(precision) or TorchBackend(
            checkpoint, device=str(device), precision=precision, threads=args.threads
        )
        track(backend, *synthetic_volume(99, 2))  # warm-up: kernels and allocator, off the clock
        report["throughput"] = {"precision": precision, "runs": []}
        for sessions in args.concurrency:
            peak_and_reset()
            row = throughput(backend, sessions, args.slices, seed=100 * sessions)
            row["peak_gpu_memory_bytes"] = peak_and_reset()
            report["throughput"]["runs"].append(row)
            print(
                f"{sessions:3d} sessions: {row['slices_per_s']:.2f} slices/s, p50 {row['p50_s_per_slice']:.4f} s, "
                f"p99 {row['p99_s_per_slice']:.4f} s",
                flush=True,
            )
        for b in {id(b): b for b in (*backends.values(), backend)}.values():
            b.close()

    report["peak_gpu_memory_bytes"] = max(peaks) if on_cuda else None
    report["elapsed_s"] = time.perf_counter() - started
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for precision, row in report["agreement"].items():
        print(
            f"{precision}: max |logit diff| {row['max_abs_logit_diff']:.3g}, mask agreement "
            f"{row['mask_agreement']:.5f}, Dice {row['mask_dice']:.5f}"
        )
    print(f"wrote {args.out} in {report['elapsed_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
