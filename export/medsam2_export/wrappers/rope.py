"""Real-valued 2D axial rotary position encoding, equal to sam2's complex one.

sam2 treats channel pairs (2i, 2i+1) as complex numbers and multiplies them by
exp(i*theta).  Written with cos/sin on the pair halves it needs no complex
dtype, which neither ONNX nor TensorRT has.
"""

from __future__ import annotations

import torch
from torch import Tensor


def axial_angles(dim: int, end_x: int, end_y: int, theta: float = 10000.0) -> Tensor:
    """Rotation angles [end_x*end_y, dim/2], in sam2's ``compute_axial_cis`` order."""
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 4)[: dim // 4].float() / dim))
    t = torch.arange(end_x * end_y, dtype=torch.float32)
    t_x = (t % end_x).float()
    t_y = torch.div(t, end_x, rounding_mode="floor").float()
    return torch.cat([torch.outer(t_x, freqs), torch.outer(t_y, freqs)], dim=-1)


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate channel pairs of ``x`` [..., N, dim] by angles given as cos/sin [N, dim/2]."""
    pairs = x.reshape(*x.shape[:-1], -1, 2)
    re, im = pairs[..., 0], pairs[..., 1]
    out = torch.stack([re * cos - im * sin, re * sin + im * cos], dim=-1)
    return out.reshape(x.shape)
