"""Image encoder graph: uint8 grey slice in, stride-4/8/16 features out."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sam2.modeling.backbones.hieradet import do_pool
from sam2.modeling.backbones.utils import window_partition, window_unpartition
from torch import Tensor, nn

from medsam2.graphs import IMAGE_SIZE

PATCH_STRIDE = 4
# Hiera pads windows with zero tokens; their qkv is just the bias, so the projection runs on
# real tokens only and the padding gets the bias afterwards. Exact, and about a tenth less work.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageEncoderGraph(nn.Module):
    """Hiera-T + FPN with sam2's input normalisation and the decoder's conv_s0/conv_s1 folded in."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.image_encoder = model.image_encoder
        self.conv_s0 = model.sam_mask_decoder.conv_s0
        self.conv_s1 = model.sam_mask_decoder.conv_s1
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        # Hiera resizes its position embedding to the patch grid at run time; with a fixed
        # 512 input that is a constant, and leaving it dynamic puts If nodes in the graph.
        trunk = self.image_encoder.trunk
        grid = IMAGE_SIZE // PATCH_STRIDE
        with torch.no_grad():
            self.register_buffer("trunk_pos_embed", trunk._get_pos_embed((grid, grid)).clone(), persistent=False)

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """image: uint8 [B, 1 or 3, 512, 512] -> feat_s0 [B,32,128,128], feat_s1 [B,64,64,64], feat_s2 [B,256,32,32]."""
        # sam2 loads grey slices as RGB with three equal channels, then normalises per channel; an RGB
        # image passes the expand unchanged.
        x = image.float() / 255.0
        x = x.expand(-1, 3, -1, -1)
        x = (x - self.mean) / self.std
        fpn = self._backbone(x)
        return self.conv_s0(fpn[0]), self.conv_s1(fpn[1]), fpn[2]

    def _backbone(self, x: Tensor) -> list[Tensor]:
        # sam2's Hiera.forward and ImageEncoder.forward, with the constant position embedding.
        encoder = self.image_encoder
        trunk = encoder.trunk
        x = trunk.patch_embed(x) + self.trunk_pos_embed
        levels = []
        for i, block in enumerate(trunk.blocks):
            x = _block(block, x)
            if i == trunk.stage_ends[-1] or (i in trunk.stage_ends and trunk.return_interm_layers):
                levels.append(x.permute(0, 3, 1, 2))
        features, _ = encoder.neck(levels)
        return features[: len(features) - encoder.scalp] if encoder.scalp > 0 else features


def _block(block: nn.Module, x: Tensor) -> Tensor:
    """sam2's ``MultiScaleBlock.forward`` (eval), with the qkv projection before window padding."""
    shortcut = x
    x = block.norm1(x)
    if block.dim != block.dim_out:
        shortcut = do_pool(block.proj(x), block.pool)
    height, width = x.shape[1], x.shape[2]
    qkv = F.linear(x, block.attn.qkv.weight)
    window_size = block.window_size
    if window_size > 0:
        qkv, pad_hw = window_partition(qkv, window_size)
    x = _attention(block.attn, qkv + block.attn.qkv.bias)
    if block.q_stride:
        window_size = block.window_size // block.q_stride[0]
        height, width = shortcut.shape[1:3]
        pad_h = (window_size - height % window_size) % window_size
        pad_w = (window_size - width % window_size) % window_size
        pad_hw = (height + pad_h, width + pad_w)
    if block.window_size > 0:
        x = window_unpartition(x, window_size, pad_hw, (height, width))
    x = shortcut + x
    return x + block.mlp(block.norm2(x))


def _attention(attn: nn.Module, qkv: Tensor) -> Tensor:
    """sam2's ``MultiScaleAttention.forward`` from an already projected qkv [B, H, W, 3 * dim_out]."""
    batch, height, width, _ = qkv.shape
    q, k, v = torch.unbind(qkv.reshape(batch, height * width, 3, attn.num_heads, -1), 2)
    if attn.q_pool:
        q = do_pool(q.reshape(batch, height, width, -1), attn.q_pool)
        height, width = q.shape[1:3]
        q = q.reshape(batch, height * width, attn.num_heads, -1)
    x = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return attn.proj(x.transpose(1, 2).reshape(batch, height, width, -1))
