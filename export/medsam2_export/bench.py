"""Seconds per propagated slice for our backends and for sam2's predictor, measured in one process.

Both sides run MedSAM2's 3D protocol for one object on the same seeded volume:
box on the middle slice, forward, reset, box again, backward.  Each side is
warmed up first (sessions, allocator), so the timings are steady-state.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path

import numpy as np
import torch

from medsam2.backends.onnxruntime_backend import OnnxRuntimeBackend
from medsam2.engine.backend import StageBackend
from medsam2.engine.protocols import ObjectPrompt, segment_volume
from medsam2.engine.tracker import Tracker
from medsam2_export.parity import synthetic_volume
from medsam2_export.reference import ReferenceTracker
from medsam2_export.torch_backend import TorchBackend


def _make_backend(name: str, checkpoint: Path, graphs: Path, threads: int | None) -> StageBackend:
    if name == "onnxruntime":
        return OnnxRuntimeBackend(graphs, threads=threads or 0)
    parts = name.split("-")
    if len(parts) != 3 or parts[0] != "torch":
        raise ValueError(f"unknown backend {name!r}")
    return TorchBackend(checkpoint, device=parts[1], precision=parts[2], threads=threads or 0)


def _time_ours(backend: StageBackend, frames: np.ndarray, prompt: ObjectPrompt) -> tuple[float, int, Tracker]:
    warm = Tracker(backend, frames[:2])
    segment_volume(warm, [ObjectPrompt(1, 0, box=prompt.box)])
    tracker = Tracker(backend, frames)
    count = 0

    def tick(*_: object) -> None:
        nonlocal count
        count += 1

    started = time.perf_counter()
    segment_volume(tracker, [prompt], on_frame=tick)
    return time.perf_counter() - started, count, tracker


def _time_reference(checkpoint: Path, frames: np.ndarray, prompt: ObjectPrompt, device: str) -> tuple[float, int]:
    ref = ReferenceTracker(checkpoint, frames)
    ref.predictor.to(device)
    ref.state["device"] = ref.state["storage_device"] = torch.device(device)
    ref.state["images"] = ref.state["images"].to(device)
    # Warm-up on the first slices, then the timed protocol.
    ref.add_prompt(1, 0, box=prompt.box)
    for _ in ref.propagate(start=0, limit=1):
        pass
    count = 0
    started = time.perf_counter()
    for reverse in (False, True):
        ref.reset()
        ref.add_prompt(1, prompt.frame, box=prompt.box)
        for _ in ref.propagate(start=prompt.frame, reverse=reverse):
            count += 1
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - started, count


def run_bench(checkpoint: Path, graphs: Path, backends: list[str], slices: int = 40, size: int = 512,
              threads: int | None = None, reference_device: str = "cpu", rounds: int = 2) -> dict:
    """Run the reference and every backend in alternating rounds on one volume; ratios are per round, then median.

    This machine's speed drifts by tens of percent over minutes, so each ratio compares
    runs made back to back, and the report gives every round.
    """
    if threads:
        torch.set_num_threads(threads)
    frames, boxes = synthetic_volume(seed=1, slices=slices, height=size, width=size)
    prompt = ObjectPrompt(1, slices // 2, box=boxes[0])
    made = {name: _make_backend(name, checkpoint, graphs, threads) for name in backends}
    per_round: list[dict] = []
    trackers: dict[str, Tracker] = {}
    for _ in range(rounds):
        ref_seconds, ref_count = _time_reference(checkpoint, frames, prompt, reference_device)
        row = {"reference_s_per_slice": ref_seconds / ref_count, "backends": {}}
        for name, backend in made.items():
            seconds, count, trackers[name] = _time_ours(backend, frames, prompt)
            row["backends"][backend.name] = seconds / count
        per_round.append(row)
    reference = float(np.median([r["reference_s_per_slice"] for r in per_round]))
    report: dict = {
        "volume": {"slices": slices, "rows": size, "columns": size, "objects": 1, "protocol": "medsam2-3d"},
        "threads": threads or torch.get_num_threads(),
        "reference_device": reference_device,
        "rounds": rounds,
        "reference_s_per_slice": reference,
        "backends": {},
        "per_round": per_round,
    }
    for name, backend in made.items():
        times = [r["backends"][backend.name] for r in per_round]
        ratios = [r["backends"][backend.name] / r["reference_s_per_slice"] for r in per_round]
        tracker = trackers[name]
        report["backends"][backend.name] = {
            "s_per_slice": float(np.median(times)),
            "ratio_vs_reference": float(np.median(ratios)),
            "ratios_per_round": ratios,
            "features_encoded": tracker.features.encoded,
            "feature_bytes_per_slice": tracker.features.nbytes // max(1, len(tracker.features)),
        }
        backend.close()
    report["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return report
