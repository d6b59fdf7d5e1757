"""``medsam2 parity``: our engine against sam2's video predictor on one seeded synthetic volume.

Two scenarios, each run step by step on both sides with the results compared
after every step:
- ``medsam2-3d``: MedSAM2's protocol (boxes on a key slice, forward, reset,
  boxes again, backward) for two objects;
- ``in-state``: boxes, forward, a negative-click correction on a tracked slice,
  resumed forward propagation, then backward in the same state (so backward
  slices attend to forward-tracked memories).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medsam2.engine.backend import StageBackend
from medsam2.engine.prompts import Box
from medsam2.engine.resize import resize_bilinear
from medsam2.engine.tracker import Direction, FrameResult, Tracker, TrackerOptions
from medsam2.errors import InvalidInput
from medsam2_export.reference import ReferenceTracker


def synthetic_volume(seed: int, slices: int = 16, height: int = 96, width: int = 112) -> tuple[np.ndarray, list[Box]]:
    """A seeded uint8 volume with two ellipsoid 'lesions' and their boxes on the middle slice."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(np.arange(slices), np.arange(height), np.arange(width), indexing="ij")
    volume = rng.normal(60, 12, (slices, height, width))
    key = slices // 2
    boxes = []
    for cz, cy, cx, r, value in (
        (key, 0.35 * height, 0.3 * width, 0.16, 200),
        (key + 1, 0.65 * height, 0.7 * width, 0.12, 140),
    ):
        rz, ry, rx = slices * 0.45, height * r, width * r
        inside = ((z - cz) / rz) ** 2 + ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1
        volume[inside] = value + rng.normal(0, 8, inside.sum())
        ys, xs = np.nonzero(inside[key])
        boxes.append(Box(float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)))
    return np.clip(volume, 0, 255).astype(np.uint8), boxes


@dataclass(slots=True)
class ParityReport:
    """Worst differences over every compared frame and object."""

    max_abs_logit_diff: float = 0.0
    max_mask_disagreement: float = 0.0
    frames: int = 0
    objects: int = 0
    steps: list[dict] = field(default_factory=list)

    def compare(
        self,
        step: str,
        frame: int,
        ours: dict[int, np.ndarray],
        ref: dict[int, np.ndarray],
        ours_video: dict[int, np.ndarray],
        ref_video: dict[int, np.ndarray],
    ) -> None:
        """Fold one frame's comparison into the report."""
        if set(ours) != set(ref):
            raise AssertionError(f"{step} frame {frame}: objects {sorted(ours)} vs reference {sorted(ref)}")
        worst_logit = max(float(np.max(np.abs(ours[o] - ref[o]))) for o in ours)
        worst_mask = max(float(np.mean((ours_video[o] > 0) != (ref_video[o] > 0))) for o in ours)
        self.max_abs_logit_diff = max(self.max_abs_logit_diff, worst_logit)
        self.max_mask_disagreement = max(self.max_mask_disagreement, worst_mask)
        self.frames += 1
        self.objects = max(self.objects, len(ours))
        self.steps.append({"step": step, "frame": frame, "logit_diff": worst_logit, "mask_disagreement": worst_mask})

    def to_json(self, with_steps: bool = False) -> dict:
        """The summary printed by ``medsam2 parity --json``."""
        out = {
            "max_abs_logit_diff": self.max_abs_logit_diff,
            "max_mask_disagreement": self.max_mask_disagreement,
            "frames": self.frames,
            "objects": self.objects,
        }
        if with_steps:
            out["steps"] = self.steps
        return out


class _Pair:
    """Our tracker and the reference, driven in lockstep."""

    def __init__(
        self, backend: StageBackend, checkpoint: Path, frames: np.ndarray, report: ParityReport, options: TrackerOptions
    ) -> None:
        self.ours = Tracker(backend, frames, options)
        self.ref = ReferenceTracker(checkpoint, frames)
        self.report = report
        self.size = frames.shape[1:]

    def _ours(self, result: FrameResult) -> tuple[dict, dict]:
        low = {o: result.low_res[i] for i, o in enumerate(result.obj_ids)}
        video = {o: resize_bilinear(v[None], self.size)[0] for o, v in low.items()}
        return low, video

    def prompt(self, step: str, obj_id: int, frame: int, **kwargs) -> None:  # noqa: ANN003
        ours, ours_video = self._ours(self.ours.add_prompt(obj_id, frame, **kwargs))
        ref = self.ref.add_prompt(obj_id, frame, **kwargs)
        ref_video = {o: resize_bilinear(v[None], self.size)[0] for o, v in ref.items()}
        self.report.compare(step, frame, ours, ref, ours_video, ref_video)

    def propagate(self, step: str, start: int, reverse: bool, limit: int | None = None) -> None:
        direction = Direction.BACKWARD if reverse else Direction.FORWARD
        ours_iter: Iterator[FrameResult] = self.ours.propagate(direction, start=start, limit=limit)
        for ref_frame, ref, ref_video in self.ref.propagate(start=start, reverse=reverse, limit=limit):
            result = next(ours_iter)
            if result.frame != ref_frame:
                raise AssertionError(f"{step}: frame order differs ({result.frame} vs reference {ref_frame})")
            ours, ours_video = self._ours(result)
            self.report.compare(step, ref_frame, ours, ref, ours_video, ref_video)
        if next(ours_iter, None) is not None:
            raise AssertionError(f"{step}: our tracker yields more frames than the reference")

    def reset(self) -> None:
        self.ours.reset()
        self.ref.reset()


PARITY_OPTIONS = TrackerOptions(fill_hole_area=0)
"""Hole filling off on our side too: the reference cannot fill holes without sam2's CUDA extension."""


def run_parity(
    backend: StageBackend,
    checkpoint: Path,
    seed: int = 0,
    slices: int = 16,
    scenarios: tuple[str, ...] = ("medsam2-3d", "in-state"),
) -> ParityReport:
    """Run the scenarios on a seeded volume and report the worst differences."""
    if slices < 4:
        raise InvalidInput(f"parity needs at least 4 slices, got {slices}")
    frames, boxes = synthetic_volume(seed, slices)
    key = slices // 2
    report = ParityReport()
    if "medsam2-3d" in scenarios:
        pair = _Pair(backend, checkpoint, frames, report, PARITY_OPTIONS)
        for reverse in (False, True):
            pair.reset()
            for obj_id, box in enumerate(boxes, start=1):
                pair.prompt("3d/box", obj_id, key, box=box)
            pair.propagate("3d/backward" if reverse else "3d/forward", key, reverse)
    if "in-state" in scenarios:
        pair = _Pair(backend, checkpoint, frames, report, PARITY_OPTIONS)
        for obj_id, box in enumerate(boxes, start=1):
            pair.prompt("in-state/box", obj_id, key, box=box)
        pair.propagate("in-state/forward", key, False)
        fix = key + max(1, min(3, slices - key - 2))  # a tracked slice with at least one after it
        cx, cy = (boxes[0].x0 + boxes[0].x1) / 2, (boxes[0].y0 + boxes[0].y1) / 2
        pair.prompt(
            "in-state/correction",
            1,
            fix,
            points=np.array([[cx, cy]], np.float32),
            labels=np.array([0], np.int32),
            clear_old=False,
        )
        pair.propagate("in-state/resume", fix + 1, False)
        pair.propagate("in-state/backward", key, True)
    return report
