"""Which of the SAM heads' four masks is kept: sam2's rules, outside the graph.

Token 0 is the single-mask output; tokens 1-3 are the multimask outputs.
- multimask (a first click, or a tracked frame): the multimask output with the
  highest predicted IoU, and that token's object pointer;
- single mask (a box, or several clicks): token 0 if its stability score
  (IoU of the mask thresholded at +0.05 and -0.05) is >= 0.98, otherwise the best
  multimask output; the object pointer is always token 0's.
Masks of frames where the object is predicted absent are replaced by -1024.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NO_OBJECT_SCORE = np.float32(-1024.0)
STABILITY_DELTA = 0.05
STABILITY_THRESH = 0.98
MULTIMASK_MAX_POINTS = 1


@dataclass(frozen=True, slots=True)
class ChosenMask:
    """The kept output of the SAM heads for a batch of objects."""

    low_res: np.ndarray  # [B, 1, 128, 128] logits, -1024 where the object is absent
    iou: np.ndarray  # [B]
    obj_ptr: np.ndarray  # [B, 256]
    object_score_logits: np.ndarray  # [B, 1]


def use_multimask(is_init_cond_frame: bool, num_points: int) -> bool:
    """sam2's ``_use_multimask`` for MedSAM2's config (multimask also while tracking)."""
    del is_init_cond_frame  # multimask_output_for_tracking makes it irrelevant
    return 0 <= num_points <= MULTIMASK_MAX_POINTS


def stability_scores(mask_logits: np.ndarray) -> np.ndarray:
    """Stability of [B, H, W] logits: area above +delta over area above -delta (1 if empty)."""
    flat = mask_logits.reshape(mask_logits.shape[0], -1)
    inter = np.sum(flat > STABILITY_DELTA, axis=-1).astype(np.float32)
    union = np.sum(flat > -STABILITY_DELTA, axis=-1).astype(np.float32)
    safe = np.where(union > 0, union, np.float32(1))
    return np.where(union > 0, inter / safe, np.float32(1.0))


def choose_mask(
    low_res_masks: np.ndarray,
    iou_scores: np.ndarray,
    obj_ptrs: np.ndarray,
    object_score_logits: np.ndarray,
    multimask: bool,
) -> ChosenMask:
    """Apply sam2's mask choice to the SAM heads' outputs (see the module docstring)."""
    rows = np.arange(low_res_masks.shape[0])
    best = 1 + np.argmax(iou_scores[:, 1:], axis=-1)
    if multimask:
        pick, ptr_pick = best, best
    else:
        stable = stability_scores(low_res_masks[:, 0]) >= STABILITY_THRESH
        pick = np.where(stable, 0, best)
        ptr_pick = np.zeros_like(best)
    mask = low_res_masks[rows, pick][:, None]
    present = (object_score_logits > 0)[:, :, None, None]
    mask = np.where(present, mask, NO_OBJECT_SCORE).astype(np.float32)
    return ChosenMask(mask, iou_scores[rows, pick], obj_ptrs[rows, ptr_pick], object_score_logits)
