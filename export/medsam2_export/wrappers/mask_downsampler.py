"""Mask downsampler graph: sam2's learned 4x convolution for mask prompts."""

from __future__ import annotations

from torch import Tensor, nn


class MaskDownsamplerGraph(nn.Module):
    """Turns a binary 512x512 mask prompt into the SAM heads' 128x128 mask input."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.mask_downsample = model.mask_downsample

    def forward(self, mask: Tensor) -> Tensor:
        """mask: float [B, 1, 512, 512] of 0/1 -> mask_input [B, 1, 128, 128]."""
        return self.mask_downsample(mask)
