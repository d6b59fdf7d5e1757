"""Image resampling that reproduces PyTorch's ``F.interpolate`` on the CPU, in numpy.

sam2 upsamples mask logits with bilinear interpolation (align_corners=False)
and downsamples mask prompts with antialiased bilinear interpolation; both are
separable, so each is written as per-axis index/weight tables.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=64)
def _bilinear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    # PyTorch's area_pixel_compute_source_index with align_corners=False, computed in float32.
    scale = np.float32(in_size / out_size)
    src = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    src = np.maximum(src, np.float32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    lam1 = (src - i0.astype(np.float32)).astype(np.float32)
    lam0 = (np.float32(1.0) - lam1).astype(np.float32)
    return i0, i1, lam0, lam1


def resize_bilinear(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of the last two axes of ``x`` (float32), as ``F.interpolate(mode="bilinear")``."""
    out_h, out_w = size
    in_h, in_w = x.shape[-2:]
    if (in_h, in_w) == (out_h, out_w):
        return x.astype(np.float32, copy=True)
    x = x.astype(np.float32, copy=False)
    h0, h1, hl0, hl1 = _bilinear_taps(in_h, out_h)
    w0, w1, wl0, wl1 = _bilinear_taps(in_w, out_w)
    # Same grouping as PyTorch's kernel: h0*(w0*a + w1*b) + h1*(w0*c + w1*d).
    rows0 = x[..., h0, :]
    rows1 = x[..., h1, :]
    top = wl0 * rows0[..., w0] + wl1 * rows0[..., w1]
    bottom = wl0 * rows1[..., w0] + wl1 * rows1[..., w1]
    return (hl0[:, None] * top + hl1[:, None] * bottom).astype(np.float32)


@lru_cache(maxsize=64)
def antialias_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out, in] weights of PyTorch's antialiased bilinear resampling along one axis."""
    scale = in_size / out_size
    support = scale if scale >= 1.0 else 1.0
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    weights = np.zeros((out_size, in_size), np.float64)
    for i in range(out_size):
        center = scale * (i + 0.5)
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        taps = np.arange(xmin, xmax)
        w = np.maximum(0.0, 1.0 - np.abs((taps - center + 0.5) * invscale))
        total = w.sum()
        weights[i, xmin:xmax] = w / total if total > 0 else w
    return weights.astype(np.float32)


def resize_antialiased(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Antialiased bilinear resize of a 2-D float array, as ``F.interpolate(..., antialias=True)``."""
    rows = antialias_matrix(x.shape[-2], size[0])
    cols = antialias_matrix(x.shape[-1], size[1])
    return (rows @ x.astype(np.float32) @ cols.T).astype(np.float32)


def to_bfloat16_bits(x: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 (nearest, ties to even) and keep the 16 bits as uint16."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))
    return (rounded >> np.uint32(16)).astype(np.uint16)


def from_bfloat16_bits(bits: np.ndarray) -> np.ndarray:
    """Widen bfloat16 bits (uint16) back to float32 exactly."""
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)
