"""How far a reduced-precision path is from the fp32 path, on masks and logits, through the whole engine.

Features are a poor guide (bf16 moves them by about 1e-2); what matters is whether the masks change. Both
paths run MedSAM2's 3D protocol on the same volume, and every propagated frame's low-resolution logits and
the final volume masks are compared.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medsam2.engine.backend import StageBackend
from medsam2.engine.protocols import ObjectPrompt, segment_volume
from medsam2.engine.tracker import FrameResult, Tracker, TrackerOptions
from medsam2_export.parity import synthetic_volume

DICE_BAR = 0.99
"""A precision may be a CPU default only if its mask Dice against fp32 is at least this."""

FP32_DICE_BAR = 0.999
"""Two fp32 paths (another runtime, or the same one on another CPU) agree at least this well on masks.

They are not bit-equal: without AVX-512, OpenVINO and ONNX Runtime pick different fp32 kernels and round
differently, so a pixel whose logit lies at the threshold may flip (Dice 0.99998 measured on an AVX2-only EPYC).
"""

FP32_LOGIT_BAR = 1e-3
"""The largest low-resolution logit difference allowed between two fp32 paths: ``medsam2 parity``'s bar."""


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks (1.0 when both are empty)."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


@dataclass(frozen=True, slots=True)
class Run:
    """One engine run: each object's volume mask and each (pass, frame)'s low-resolution logits."""

    masks: dict[int, np.ndarray]
    logits: dict[tuple[str, int], np.ndarray]
    tracker: Tracker


def run_protocol(
    backend: StageBackend, frames: np.ndarray, prompts: list[ObjectPrompt], options: TrackerOptions | None = None
) -> Run:
    """MedSAM2's 3D protocol on ``frames``, keeping every frame's logits."""
    logits: dict[tuple[str, int], np.ndarray] = {}

    def keep(pass_name: str, result: FrameResult) -> None:
        logits[(pass_name, result.frame)] = result.low_res.copy()

    tracker = Tracker(backend, frames, options or TrackerOptions())
    masks = segment_volume(tracker, prompts, on_frame=keep)
    return Run(masks, logits, tracker)


def compare(candidate: Run, fp32: Run) -> dict[str, float]:
    """The worst object's mask Dice and the largest logit difference over every frame."""
    if set(candidate.logits) != set(fp32.logits):
        raise ValueError("the two runs did not visit the same frames")
    return {
        "mask_dice_vs_fp32": min(dice(candidate.masks[o], fp32.masks[o]) for o in fp32.masks),
        "max_abs_logit_diff_vs_fp32": max(
            float(np.max(np.abs(candidate.logits[k] - fp32.logits[k]))) for k in fp32.logits
        ),
    }


def parity_prompts(seed: int = 0, slices: int = 16) -> tuple[np.ndarray, list[ObjectPrompt]]:
    """``medsam2 parity``'s synthetic volume and its two box prompts on the key slice."""
    frames, boxes = synthetic_volume(seed, slices)
    return frames, [ObjectPrompt(obj_id, slices // 2, box=box) for obj_id, box in enumerate(boxes, start=1)]
