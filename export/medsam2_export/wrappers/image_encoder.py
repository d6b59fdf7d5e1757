"""Image encoder graph: uint8 grey slice in, stride-4/8/16 features out."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from medsam2.graphs import IMAGE_SIZE

PATCH_STRIDE = 4
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
        """image: uint8 [B, 1, 512, 512] -> feat_s0 [B,32,128,128], feat_s1 [B,64,64,64], feat_s2 [B,256,32,32]."""
        # sam2 loads grey slices as RGB with three equal channels, then normalises per channel.
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
            x = block(x)
            if i == trunk.stage_ends[-1] or (i in trunk.stage_ends and trunk.return_interm_layers):
                levels.append(x.permute(0, 3, 1, 2))
        features, _ = encoder.neck(levels)
        return features[: len(features) - encoder.scalp] if encoder.scalp > 0 else features
