"""Memory encoder graph: a frame's features and chosen mask in, its memory entry out."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class MemoryEncoderGraph(nn.Module):
    """sam2's ``_encode_new_memory`` in eval mode, with the binarise choice as an input."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.memory_encoder = model.memory_encoder
        self.sigmoid_scale = float(model.sigmoid_scale_for_mem_enc)
        self.sigmoid_bias = float(model.sigmoid_bias_for_mem_enc)
        self.no_obj_embed_spatial = model.no_obj_embed_spatial

    def forward(self, feat_s2: Tensor, mask_logits: Tensor, binarize: Tensor, object_score_logits: Tensor) -> Tensor:
        """feat_s2 [B,256,32,32], mask_logits [B,1,512,512], binarize [B], object_score_logits [B,1] -> [B,64,32,32]."""
        hard = binarize.view(-1, 1, 1, 1) > 0.5
        mask = torch.where(hard, (mask_logits > 0).float(), torch.sigmoid(mask_logits))
        mask = mask * self.sigmoid_scale + self.sigmoid_bias
        features = self.memory_encoder(feat_s2, mask, skip_mask_sigmoid=True)["vision_features"]
        absent = 1.0 - (object_score_logits > 0).float()
        return features + absent[..., None, None] * self.no_obj_embed_spatial[..., None, None]
