"""The paper's prompt for an object: the ground truth's box on the middle slice of its extent, optionally jittered."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medsam2.engine.prompts import Box


@dataclass(frozen=True, slots=True)
class GroundTruthPrompt:
    """Where and how an object is prompted."""

    frame: int
    box: Box
    extent: tuple[int, int]
    """First and last slice on which the object is present."""


def key_slice(mask: np.ndarray) -> tuple[int, tuple[int, int]]:
    """The middle slice of the object's extent (the nearest slice that holds the object), and the extent."""
    present = np.flatnonzero(mask.any(axis=(1, 2)))
    first, last = int(present[0]), int(present[-1])
    middle = (first + last) // 2
    return int(present[np.argmin(np.abs(present - middle))]), (first, last)


def box_of(mask2d: np.ndarray) -> Box:
    """The tight box (x0, y0, x1, y1) of a 2-D mask, in pixel indices (x = column, y = row)."""
    rows = np.flatnonzero(mask2d.any(axis=1))
    cols = np.flatnonzero(mask2d.any(axis=0))
    return Box(float(cols[0]), float(rows[0]), float(cols[-1]), float(rows[-1]))


def jitter_box(box: Box, max_px: float, rng: np.random.Generator, height: int, width: int) -> Box:
    """Move each side of ``box`` by a uniform integer in [-max_px, max_px], kept inside the slice and non-empty."""
    if max_px <= 0:
        return box
    d = rng.integers(-int(max_px), int(max_px) + 1, size=4)
    x0 = float(np.clip(box.x0 + d[0], 0, width - 1))
    y0 = float(np.clip(box.y0 + d[1], 0, height - 1))
    x1 = float(np.clip(box.x1 + d[2], 0, width - 1))
    y1 = float(np.clip(box.y1 + d[3], 0, height - 1))
    if x1 <= x0:
        x0, x1 = box.x0, box.x1
    if y1 <= y0:
        y0, y1 = box.y0, box.y1
    return Box(x0, y0, x1, y1)


def ground_truth_prompt(
    mask: np.ndarray, *, video: bool, jitter_px: float = 0.0, rng: np.random.Generator | None = None
) -> GroundTruthPrompt:
    """The paper's prompt: the middle slice for volumes; for videos the first frame the object appears on."""
    key, extent = key_slice(mask)
    if video:
        key = extent[0]
    box = box_of(mask[key])
    if jitter_px > 0:
        box = jitter_box(
            box, jitter_px, rng if rng is not None else np.random.default_rng(0), mask.shape[1], mask.shape[2]
        )
    return GroundTruthPrompt(key, box, extent)
