"""Numpy resampling against PyTorch's F.interpolate, and bfloat16 rounding against torch's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medsam2.engine.resize import from_bfloat16_bits, resize_antialiased, resize_bilinear, to_bfloat16_bits


@pytest.mark.parametrize("size", [(512, 512), (96, 112), (128, 64), (300, 517)])
def test_bilinear_matches_torch(size: tuple[int, int]) -> None:
    x = (np.random.default_rng(0).standard_normal((2, 128, 128)) * 8).astype(np.float32)
    want = F.interpolate(torch.from_numpy(x)[:, None], size=size, mode="bilinear", align_corners=False)[:, 0].numpy()
    assert np.max(np.abs(resize_bilinear(x, size) - want)) < 5e-4


@pytest.mark.parametrize(("src", "dst"), [((512, 512), (128, 128)), ((80, 96), (512, 512)), ((700, 600), (512, 512))])
def test_antialiased_matches_torch(src: tuple[int, int], dst: tuple[int, int]) -> None:
    x = (np.random.default_rng(1).random(src) > 0.5).astype(np.float32) * 20 - 10
    want = F.interpolate(
        torch.from_numpy(x)[None, None], size=dst, mode="bilinear", align_corners=False, antialias=True
    )[0, 0].numpy()
    assert np.max(np.abs(resize_antialiased(x, dst) - want)) < 1e-4


def test_bfloat16_rounding_matches_torch() -> None:
    x = (np.random.default_rng(2).standard_normal(200_000) * 3).astype(np.float32)
    want = torch.from_numpy(x).to(torch.bfloat16).float().numpy()
    assert np.array_equal(from_bfloat16_bits(to_bfloat16_bits(x)), want)
