"""Hole filling against an independent flood fill, with sam2's rules (8-connectivity, border islands too)."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest

from medsam2.engine.holes import FILL_VALUE, fill_holes


def _flood_fill_reference(logits: np.ndarray, max_area: int) -> np.ndarray:
    background = logits <= 0
    seen = np.zeros_like(background)
    out = logits.copy()
    h, w = logits.shape
    for y0 in range(h):
        for x0 in range(w):
            if not background[y0, x0] or seen[y0, x0]:
                continue
            component, queue = [], deque([(y0, x0)])
            seen[y0, x0] = True
            while queue:
                y, x = queue.popleft()
                component.append((y, x))
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        ny, nx = y + dy, x + dx
                        if 0 <= ny < h and 0 <= nx < w and background[ny, nx] and not seen[ny, nx]:
                            seen[ny, nx] = True
                            queue.append((ny, nx))
            if len(component) <= max_area:
                for y, x in component:
                    out[y, x] = FILL_VALUE
    return out


@pytest.mark.parametrize("seed", range(4))
def test_matches_flood_fill(seed: int) -> None:
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((40, 48)).astype(np.float32) + 0.8  # mostly foreground, many small holes
    assert np.array_equal(fill_holes(logits, 8), _flood_fill_reference(logits, 8))


def test_small_hole_filled_large_kept_and_diagonal_counts() -> None:
    logits = np.full((12, 12), 5.0, np.float32)
    logits[2, 2] = logits[3, 3] = -1.0  # one 8-connected hole of area 2
    logits[6:12, 6:12] = -1.0  # a large background region at the border
    out = fill_holes(logits[None], 8)[0]
    assert out[2, 2] == out[3, 3] == FILL_VALUE
    assert np.all(out[6:, 6:] == -1.0)


def test_zero_area_disables() -> None:
    logits = -np.ones((4, 4), np.float32)
    assert fill_holes(logits, 0) is logits
