"""SAM heads graph: prompt encoder + two-way mask decoder + object pointers.

Prompts come as a fixed number of point slots; unused slots (label -2) are
masked out of every attention whose keys are prompt tokens, which makes them
invisible to the real tokens.  All four mask tokens are decoded; which mask is
kept (multimask argmax or stability fallback) is chosen outside, in numpy.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from medsam2.graphs import IMAGE_SIZE, POINT_LABEL_PAD, POINT_LABEL_UNUSED
from medsam2_export.wrappers.attention import key_bias, masked_attention

NUM_OUTPUT_TOKENS = 6  # object score, IoU and four mask tokens


class SamHeadsGraph(nn.Module):
    """sam2's ``_forward_sam_heads`` emitting every mask token's outputs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.prompt_encoder = model.sam_prompt_encoder
        self.decoder = model.sam_mask_decoder
        self.obj_ptr_proj = model.obj_ptr_proj
        self.no_obj_ptr = model.no_obj_ptr
        with torch.no_grad():
            dense_pe = self.prompt_encoder.get_dense_pe()
        self.register_buffer("dense_pe", dense_pe.flatten(2).transpose(1, 2), persistent=False)

    def forward(
        self,
        pix_feat: Tensor,
        feat_s0: Tensor,
        feat_s1: Tensor,
        point_coords: Tensor,
        point_labels: Tensor,
        mask_input: Tensor,
        has_mask_input: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Shapes as in ``medsam2.graphs.SAM_HEADS``."""
        sparse, prompt_valid = self._embed_points(point_coords, point_labels)
        dense = self._embed_mask(mask_input, has_mask_input)
        batch = pix_feat.shape[0]
        dec = self.decoder
        output_tokens = torch.cat([dec.obj_score_token.weight, dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(batch, -1, -1), sparse], dim=1)
        token_valid = torch.cat(
            [torch.ones_like(prompt_valid[:, :1]).expand(-1, NUM_OUTPUT_TOKENS), prompt_valid], dim=1
        )
        src = pix_feat + dense
        hs, src = self._two_way(src.flatten(2).transpose(1, 2), tokens, key_bias(token_valid))
        mask_tokens_out = hs[:, 2 : 2 + dec.num_mask_tokens]
        masks = self._masks(src, mask_tokens_out, feat_s0, feat_s1, batch)
        iou = dec.iou_prediction_head(hs[:, 1])
        object_score_logits = dec.pred_obj_score_head(hs[:, 0])
        # sam2's fixed no-object pointer: a hard choice by the object score.
        present = (object_score_logits > 0).float().unsqueeze(1)
        obj_ptrs = present * self.obj_ptr_proj(mask_tokens_out)
        obj_ptrs = obj_ptrs + (1 - present) * self.no_obj_ptr
        return masks, iou, obj_ptrs, object_score_logits

    def _embed_points(self, coords: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        pe = self.prompt_encoder
        # sam2 always appends one "not a point" after the prompts (it never passes boxes separately).
        coords = torch.cat([coords + 0.5, torch.zeros_like(coords[:, :1])], dim=1)
        labels = torch.cat([labels, torch.full_like(labels[:, :1], POINT_LABEL_PAD)], dim=1)
        embedding = pe.pe_layer._pe_encoding(coords / IMAGE_SIZE)
        not_a_point = (labels == POINT_LABEL_PAD) | (labels == POINT_LABEL_UNUSED)
        embedding = torch.where(
            not_a_point.unsqueeze(-1), torch.zeros_like(embedding) + pe.not_a_point_embed.weight, embedding
        )
        for label in range(4):
            embedding = torch.where(
                (labels == label).unsqueeze(-1), embedding + pe.point_embeddings[label].weight, embedding
            )
        return embedding, (labels != POINT_LABEL_UNUSED).float()

    def _embed_mask(self, mask_input: Tensor, has_mask_input: Tensor) -> Tensor:
        pe = self.prompt_encoder
        from_mask = pe.mask_downscaling(mask_input)
        no_mask = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand_as(from_mask)
        return torch.where(has_mask_input.view(-1, 1, 1, 1) > 0.5, from_mask, no_mask)

    def _two_way(self, image: Tensor, tokens: Tensor, token_bias: Tensor) -> tuple[Tensor, Tensor]:
        transformer = self.decoder.transformer
        image_pe = self.dense_pe
        queries, keys = tokens, image
        for layer in transformer.layers:
            if layer.skip_first_layer_pe:
                queries = masked_attention(layer.self_attn, queries, queries, queries, token_bias)
            else:
                q = queries + tokens
                queries = queries + masked_attention(layer.self_attn, q, q, queries, token_bias)
            queries = layer.norm1(queries)
            q, k = queries + tokens, keys + image_pe
            queries = layer.norm2(queries + masked_attention(layer.cross_attn_token_to_image, q, k, keys))
            queries = layer.norm3(queries + layer.mlp(queries))
            q, k = queries + tokens, keys + image_pe
            keys = layer.norm4(keys + masked_attention(layer.cross_attn_image_to_token, k, q, queries, token_bias))
        q, k = queries + tokens, keys + image_pe
        queries = transformer.norm_final_attn(
            queries + masked_attention(transformer.final_attn_token_to_image, q, k, keys)
        )
        return queries, keys

    def _masks(self, src: Tensor, mask_tokens_out: Tensor, feat_s0: Tensor, feat_s1: Tensor, batch: int) -> Tensor:
        dec = self.decoder
        src = src.transpose(1, 2).reshape(batch, -1, feat_s1.shape[-2] // 2, feat_s1.shape[-1] // 2)
        dc1, ln1, act1, dc2, act2 = dec.output_upscaling
        upscaled = act1(ln1(dc1(src) + feat_s1))
        upscaled = act2(dc2(upscaled) + feat_s0)
        hyper = torch.stack([mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(dec.output_hypernetworks_mlps)], dim=1)
        b, c, h, w = upscaled.shape
        return torch.matmul(hyper, upscaled.reshape(b, c, h * w)).reshape(b, -1, h, w)
