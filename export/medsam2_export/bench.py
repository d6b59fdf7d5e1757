"""Seconds per propagated slice for our backends and for sam2's predictor, measured in one process.

Both sides run MedSAM2's 3D protocol for one object on the same seeded volume:
box on the middle slice, forward, reset, box again, backward.  Each side is
warmed up first (sessions, allocator), so the timings are steady-state.

For each backend the report also gives where the time goes (seconds and FLOPs per slice for each stage
graph, the rest being numpy work outside the graphs), the fraction of this CPU's measured peak FLOP/s that
the graphs reach, and, for every path but the fp32 ONNX Runtime one, its agreement with that fp32 path.
A path's fraction of peak is the time its graphs' FLOPs would take at the peak of each stage's own precision
(fp32 or bf16), divided by its measured time per slice.
"""

from __future__ import annotations

import resource
import time
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from medsam2.backends.onnxruntime_backend import OnnxRuntimeBackend
from medsam2.engine.backend import StageBackend
from medsam2.engine.protocols import ObjectPrompt
from medsam2.graphs import Stage
from medsam2_export.agreement import DICE_BAR, FP32_DICE_BAR, FP32_LOGIT_BAR, compare, parity_prompts, run_protocol
from medsam2_export.flops import StageFlops, measure_peak_flops
from medsam2_export.parity import PARITY_OPTIONS, synthetic_volume
from medsam2_export.reference import ReferenceTracker
from medsam2_export.torch_backend import TorchBackend

FP32_PATH = "onnxruntime"
"""The fp32 path every other path is compared with: the portable default, itself checked against sam2."""
GOAL_BEST_RATIO = 0.35
"""The best path at a mask Dice >= 0.99 against fp32 should take at most this share of the reference's time."""
GOAL_FP32_RATIO = 0.8
"""fp32 ONNX Runtime should take at most this share of the reference's time, in every round."""


def _make_backend(name: str, checkpoint: Path, graphs: Path, threads: int | None) -> StageBackend:
    if name == "onnxruntime":
        return OnnxRuntimeBackend(graphs, threads=threads or 0)
    if name == "openvino" or name.startswith("openvino-"):
        from medsam2.backends.openvino_backend import OpenVinoBackend

        return OpenVinoBackend(graphs, precision=name.partition("-")[2] or "fp32", threads=threads or 0)
    parts = name.split("-")
    if len(parts) != 3 or parts[0] != "torch":
        raise ValueError(f"unknown backend {name!r}")
    return TorchBackend(checkpoint, device=parts[1], precision=parts[2], threads=threads or 0)


class _StageClock:
    """Wraps a backend to add up seconds per stage and remember each call's input shapes (for FLOPs)."""

    def __init__(self, backend: StageBackend) -> None:
        self.backend = backend
        self.name = backend.name
        self.precision = backend.precision
        self.fused_track_step = backend.fused_track_step
        self.seconds: dict[Stage, float] = defaultdict(float)
        self.calls: list[tuple[Stage, dict[str, tuple[tuple[int, ...], np.dtype]]]] = []

    def run(self, stage: Stage, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run and time one stage."""
        started = time.perf_counter()
        try:
            return self.backend.run(stage, inputs)
        finally:
            self.seconds[stage] += time.perf_counter() - started
            self.calls.append((stage, {k: (v.shape, v.dtype) for k, v in inputs.items()}))

    def reset(self) -> None:
        """Forget what was timed so far."""
        self.seconds.clear()
        self.calls.clear()

    def close(self) -> None:
        """Close the wrapped backend."""
        self.backend.close()


def _flops_by_stage(clock: _StageClock, counter: StageFlops) -> dict[Stage, int]:
    flops: dict[Stage, int] = defaultdict(int)
    for stage, shapes in clock.calls:
        flops[stage] += counter.count(stage, {k: np.zeros(shape, dtype) for k, (shape, dtype) in shapes.items()})
    return flops


def _time_ours(clock: _StageClock, frames: np.ndarray, prompt: ObjectPrompt):  # noqa: ANN202
    run_protocol(clock, frames[:2], [ObjectPrompt(1, 0, box=prompt.box)])  # warm-up: sessions, allocator
    clock.reset()
    started = time.perf_counter()
    run = run_protocol(clock, frames, [prompt])
    return time.perf_counter() - started, len(run.logits), run


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


def _precision(backend: StageBackend) -> str:
    return getattr(backend, "precision", "fp32")


def _stage_precision(backend: StageBackend, stage: Stage) -> str:
    """What one stage computes in (``fp32`` or ``bf16``): ``mixed`` differs by stage."""
    precision = _precision(backend)
    if precision == "mixed":
        from medsam2.backends.openvino_backend import stage_precision

        return stage_precision(precision, stage)
    return precision


def run_bench(
    checkpoint: Path,
    graphs: Path,
    backends: list[str],
    slices: int = 40,
    size: int = 512,
    threads: int | None = None,
    reference_device: str = "cpu",
    rounds: int = 2,
    agreement_slices: int = 16,
) -> dict:
    """Run the reference and every backend in alternating rounds on one volume; ratios are per round, then median.

    This machine's speed drifts by tens of percent over minutes, so each ratio compares
    runs made back to back, and the report gives every round.
    """
    if threads:
        torch.set_num_threads(threads)
    frames, boxes = synthetic_volume(seed=1, slices=slices, height=size, width=size)
    prompt = ObjectPrompt(1, slices // 2, box=boxes[0])
    clocks = {name: _StageClock(_make_backend(name, checkpoint, graphs, threads)) for name in backends}
    precisions = sorted({_stage_precision(c.backend, s) for c in clocks.values() for s in Stage} | {"fp32"})
    peaks: dict[str, list[dict]] = {p: [] for p in precisions}

    def measure_peaks() -> None:
        for p in precisions:
            peaks[p].append(measure_peak_flops(precision=p, threads=threads or 0, repeats=8))

    per_round: list[dict] = []
    runs: dict = {}
    stage_rounds: dict[str, list[dict[Stage, float]]] = defaultdict(list)
    measure_peaks()
    for _ in range(rounds):
        ref_seconds, ref_count = _time_reference(checkpoint, frames, prompt, reference_device)
        row = {"reference_s_per_slice": ref_seconds / ref_count, "backends": {}}
        for name, clock in clocks.items():
            seconds, count, runs[name] = _time_ours(clock, frames, prompt)
            row["backends"][clock.name] = seconds / count
            stage_rounds[name].append({s: t / count for s, t in clock.seconds.items()})
        per_round.append(row)
        measure_peaks()
    reference = float(np.median([r["reference_s_per_slice"] for r in per_round]))
    peak = {p: max(m["flops_per_s"] for m in ms) for p, ms in peaks.items()}
    report: dict = {
        "volume": {"slices": slices, "rows": size, "columns": size, "objects": 1, "protocol": "medsam2-3d"},
        "threads": threads or torch.get_num_threads(),
        "reference_device": reference_device,
        "rounds": rounds,
        "reference_s_per_slice": reference,
        "peak_flops_per_s": peak,
        "peak_method": {
            p: ms[0]["method"] + f", highest of {len(ms)} measurements spread over the run" for p, ms in peaks.items()
        },
        "flops_method": "2 x multiply-accumulates of every MatMul, Gemm, Conv and ConvTranspose node of the ONNX "
        "graphs, at the shapes of each call made in the timed run",
        "agreement": {
            "fp32_path": FP32_PATH,
            "volume": f"medsam2 parity's synthetic volume (seed 0, "
            f"{agreement_slices} slices, two objects), MedSAM2's 3D protocol, hole filling off",
            "dice_bar": DICE_BAR,
            "fp32_dice_bar": FP32_DICE_BAR,
            "fp32_logit_bar": FP32_LOGIT_BAR,
        },
        "backends": {},
        "per_round": per_round,
    }
    counter = StageFlops(graphs)
    fp32_backend = clocks[FP32_PATH].backend if FP32_PATH in clocks else None
    own_fp32 = fp32_backend is None
    agreement_frames, agreement_prompts = parity_prompts(seed=0, slices=agreement_slices)
    fp32_run = None
    for name, clock in clocks.items():
        backend = clock.backend
        count = len(runs[name].logits)
        times = [r["backends"][clock.name] for r in per_round]
        ratios = [r["backends"][clock.name] / r["reference_s_per_slice"] for r in per_round]
        s_per_slice = float(np.median(times))
        flops = _flops_by_stage(clock, counter)
        stages = {}
        ideal_seconds = 0.0  # the slice's time if every stage ran at the peak of its own precision
        for stage in sorted(flops, key=lambda s: s.value):
            seconds = float(np.median([r.get(stage, 0.0) for r in stage_rounds[name]]))
            per_slice = flops[stage] / count
            stage_ideal = per_slice / peak[_stage_precision(backend, stage)]
            ideal_seconds += stage_ideal
            stages[stage.value] = {
                "s_per_slice": seconds,
                "gflop_per_slice": per_slice / 1e9,
                "precision": _stage_precision(backend, stage),
                "fraction_of_peak": stage_ideal / seconds if seconds else 0.0,
            }
        flops_per_slice = sum(flops.values()) / count
        entry = {
            "precision": _precision(backend),
            "s_per_slice": s_per_slice,
            "ratio_vs_reference": float(np.median(ratios)),
            "ratios_per_round": ratios,
            "gflop_per_slice": flops_per_slice / 1e9,
            "achieved_gflop_per_s": flops_per_slice / s_per_slice / 1e9,
            "fraction_of_peak": ideal_seconds / s_per_slice,
            "stages": stages,
            "features_encoded": runs[name].tracker.features.encoded,
            "feature_bytes_per_slice": runs[name].tracker.features.nbytes // max(1, len(runs[name].tracker.features)),
            "outside_graphs_s_per_slice": s_per_slice - sum(s["s_per_slice"] for s in stages.values()),
        }
        if name != FP32_PATH:
            if fp32_backend is None:
                fp32_backend = OnnxRuntimeBackend(graphs, threads=threads or 0)
            if fp32_run is None:
                fp32_run = run_protocol(fp32_backend, agreement_frames, agreement_prompts, PARITY_OPTIONS)
            entry.update(compare(run_protocol(backend, agreement_frames, agreement_prompts, PARITY_OPTIONS), fp32_run))
            entry["bench_volume_mask_dice_vs_fp32"] = (
                compare(runs[name], runs[FP32_PATH])["mask_dice_vs_fp32"] if FP32_PATH in runs else None
            )
        report["backends"][clock.name] = entry
    report["goals"] = _goals(report["backends"])
    for clock in clocks.values():
        clock.close()
    if own_fp32 and fp32_backend is not None:
        fp32_backend.close()
    report["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return report


def _goals(rows: dict[str, dict]) -> dict:
    """The issue's targets, checked on this run's figures."""
    eligible = {n: r for n, r in rows.items() if r.get("mask_dice_vs_fp32", 1.0) >= DICE_BAR}
    goals: dict = {}
    if eligible:
        best = min(eligible, key=lambda n: eligible[n]["ratio_vs_reference"])
        ratio = eligible[best]["ratio_vs_reference"]
        goals["best_path_at_dice_bar"] = {
            "backend": best,
            "ratio_vs_reference": ratio,
            "goal": GOAL_BEST_RATIO,
            "met": ratio <= GOAL_BEST_RATIO,
        }
    if FP32_PATH in rows:
        worst = max(rows[FP32_PATH]["ratios_per_round"])
        goals["fp32_onnxruntime_every_round"] = {
            "worst_ratio": worst,
            "goal": GOAL_FP32_RATIO,
            "met": worst <= GOAL_FP32_RATIO,
        }
    return goals
