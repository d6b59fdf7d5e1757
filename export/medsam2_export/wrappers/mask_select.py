"""Mask-select graph: sam2's choice of mask on a tracked frame, for the fused Triton track step.

On a tracked frame there are no clicks, so sam2 always takes the multimask
output with the highest predicted IoU (see ``medsam2.engine.mask_choice``).
The engine does the same in numpy when it runs stage by stage; this graph lets
Triton chain the heads into the memory encoder without a round trip.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medsam2.graphs import IMAGE_SIZE

NO_OBJECT_SCORE = -1024.0


class MaskSelectGraph(nn.Module):
    """Multimask argmax, no-object masking, and the upsampling the memory encoder needs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        del model  # no parameters: the choice is bookkeeping

    def forward(
        self, low_res_masks: Tensor, iou_scores: Tensor, obj_ptrs: Tensor, object_score_logits: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Shapes as in ``medsam2.graphs.MASK_SELECT``."""
        best = torch.argmax(iou_scores[:, 1:], dim=1) + 1
        size = low_res_masks.shape[-1]
        chosen = torch.gather(low_res_masks, 1, best.view(-1, 1, 1, 1).expand(-1, 1, size, size))
        present = object_score_logits.view(-1, 1, 1, 1) > 0
        chosen = torch.where(present, chosen, torch.full_like(chosen, NO_OBJECT_SCORE))
        # Indexing, not squeeze: squeezing a traced dynamic axis exports as an If node.
        ptr = torch.gather(obj_ptrs, 1, best.view(-1, 1, 1).expand(-1, 1, obj_ptrs.shape[-1]))[:, 0]
        mask_logits = F.interpolate(chosen, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
        return chosen, ptr, mask_logits, torch.zeros_like(iou_scores[:, 0])
