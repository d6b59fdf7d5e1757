"""The losses of sam2's training recipe as MedSAM2 weights them: focal 20, dice 1, object score 1.

Written from the definitions (focal loss of Lin et al. with alpha 0.25, gamma 2; soft dice with +1 smoothing;
binary cross-entropy on the object-score logit), per object and frame, averaged over frames.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FOCAL_WEIGHT = 20.0
DICE_WEIGHT = 1.0
OBJECT_SCORE_WEIGHT = 1.0


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Mean sigmoid focal loss over pixels, per item of the batch: [B]."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return loss.flatten(1).mean(1)


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - soft dice, per item: [B]."""
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    return 1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)


def frame_loss(mask_logits: torch.Tensor, object_logit: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """One frame's loss: mask logits [B,1,h,w] against target [B,1,h,w], object logit [B,1]."""
    present = target.flatten(1).amax(1, keepdim=True)
    mask_term = FOCAL_WEIGHT * focal_loss(mask_logits, target) + DICE_WEIGHT * dice_loss(mask_logits, target)
    # Frames without the object teach only the object score (sam2 does the same: masks of absent objects
    # are not supervised).
    mask_term = (mask_term * present.squeeze(1)).mean()
    score_term = F.binary_cross_entropy_with_logits(object_logit, present)
    return mask_term + OBJECT_SCORE_WEIGHT * score_term
