"""Image encoder graph: uint8 grey slice in, stride-4/8/16 features out."""

from __future__ import annotations

import torch
from torch import Tensor, nn

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

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """image: uint8 [B, 1, 512, 512] -> feat_s0 [B,32,128,128], feat_s1 [B,64,64,64], feat_s2 [B,256,32,32]."""
        # sam2 loads grey slices as RGB with three equal channels, then normalises per channel.
        x = image.float() / 255.0
        x = x.expand(-1, 3, -1, -1)
        x = (x - self.mean) / self.std
        fpn = self.image_encoder(x)["backbone_fpn"]
        return self.conv_s0(fpn[0]), self.conv_s1(fpn[1]), fpn[2]
