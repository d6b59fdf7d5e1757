"""Multi-head attention over sam2's ``Attention`` weights, with an optional key mask."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def key_bias(valid: Tensor) -> Tensor:
    """Additive attention bias [B, K]: 0 for a valid key, -inf for an empty slot."""
    return torch.where(valid > 0.5, torch.zeros_like(valid), torch.full_like(valid, float("-inf")))


def project(attn: nn.Module, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Apply the q/k/v projections of a sam2 ``Attention`` and split heads: [B, heads, N, d]."""
    heads = attn.num_heads
    return tuple(_split(proj(x), heads) for proj, x in ((attn.q_proj, q), (attn.k_proj, k), (attn.v_proj, v)))


def attend(attn: nn.Module, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None) -> Tensor:
    """Scaled dot-product attention on projected heads, then sam2's output projection."""
    scores = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    if bias is not None:
        scores = scores + bias[:, None, None, :]
    out = torch.matmul(torch.softmax(scores, dim=-1), v)
    b, h, n, d = out.shape
    return attn.out_proj(out.transpose(1, 2).reshape(b, n, h * d))


def masked_attention(attn: nn.Module, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None) -> Tensor:
    """sam2's ``Attention.forward`` with keys masked by ``bias``."""
    return attend(attn, *project(attn, q, k, v), bias=bias)


def _split(x: Tensor, heads: int) -> Tensor:
    b, n, c = x.shape
    return x.reshape(b, n, heads, c // heads).transpose(1, 2)
