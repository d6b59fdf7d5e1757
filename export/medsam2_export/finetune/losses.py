"""The losses of sam2's training recipe as MedSAM2 weights them: focal 20, dice 1, IoU 1, object score 1.

Written from the definitions that sam2's ``training/loss_fns.py`` (``MultiStepMultiMasksAndIous``) uses, with
the settings of its SAM 2.1 training config (``supervise_all_iou: true``, ``iou_use_l1_loss: true``,
``pred_obj_scores: true``, object-score focal gamma 0 and alpha -1, i.e. plain binary cross-entropy):

- every mask the decoder outputs is scored (focal of Lin et al. with alpha 0.25, gamma 2; soft dice with +1
  smoothing); the focal and dice terms back-propagate only through the mask whose 20*focal + dice is lowest;
- the IoU head is trained on every output (L1 to the IoU of the thresholded mask), because on tracked frames
  the tracker keeps the output with the highest predicted IoU; an untrained IoU head makes that choice random;
- the mask and IoU terms count only on frames where the object is present; the object-score logit is trained
  with binary cross-entropy on every frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

FOCAL_WEIGHT = 20.0
DICE_WEIGHT = 1.0
IOU_WEIGHT = 1.0
OBJECT_SCORE_WEIGHT = 1.0


@dataclass(frozen=True, slots=True)
class FrameLoss:
    """One frame's weighted loss and its terms (unweighted), for logging."""

    total: torch.Tensor
    focal: float
    dice: float
    iou: float
    object_score: float


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Mean sigmoid focal loss over pixels, per mask: [B, M, h, w] -> [B, M]."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return loss.flatten(2).mean(-1)


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - soft dice, per mask: [B, M, h, w] -> [B, M]."""
    p = torch.sigmoid(logits).flatten(2)
    t = target.flatten(2)
    return 1 - (2 * (p * t).sum(-1) + 1) / (p.sum(-1) + t.sum(-1) + 1)


def iou_loss(logits: torch.Tensor, target: torch.Tensor, predicted_ious: torch.Tensor) -> torch.Tensor:
    """L1 between the predicted IoUs [B, M] and the IoUs of the masks (logits > 0) with the target: [B, M]."""
    pred = logits.flatten(2) > 0
    truth = target.flatten(2) > 0
    inter = (pred & truth).sum(-1).float()
    union = (pred | truth).sum(-1).float().clamp(min=1.0)
    return (predicted_ious - inter / union).abs()


def frame_loss(
    mask_logits: torch.Tensor, predicted_ious: torch.Tensor, object_logit: torch.Tensor, target: torch.Tensor
) -> FrameLoss:
    """One frame: every output mask [B,M,h,w] and its IoU estimate [B,M] vs target [B,1,h,w]; object logit [B,1]."""
    target = target.expand_as(mask_logits)
    present = target[:, 0].flatten(1).amax(1)  # [B]
    focal = focal_loss(mask_logits, target)
    dice = dice_loss(mask_logits, target)
    best = torch.argmin(FOCAL_WEIGHT * focal + DICE_WEIGHT * dice, dim=1)
    rows = torch.arange(mask_logits.shape[0], device=mask_logits.device)
    focal_best, dice_best = focal[rows, best] * present, dice[rows, best] * present
    iou = iou_loss(mask_logits, target, predicted_ious).mean(1) * present
    score = F.binary_cross_entropy_with_logits(object_logit, present[:, None])
    total = (
        FOCAL_WEIGHT * focal_best.mean()
        + DICE_WEIGHT * dice_best.mean()
        + IOU_WEIGHT * iou.mean()
        + OBJECT_SCORE_WEIGHT * score
    )
    return FrameLoss(
        total,
        float(focal_best.mean().detach()),
        float(dice_best.mean().detach()),
        float(iou.mean().detach()),
        float(score.detach()),
    )
