"""Quick-look pictures: masks drawn over the uint8 slices as PNG (one slice) or GIF (a run of slices).

For a person to check a result at a glance, not for diagnosis: each object is
filled translucently in its segment colour and outlined opaquely.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from medsam2.errors import InvalidInput
from medsam2.io.atomic import write_atomic

_FILL_ALPHA = 0.35
_GIF_FRAME_MS = 120


def blend(image: np.ndarray, masks: Sequence[np.ndarray], colours: Sequence[tuple[int, int, int]]) -> np.ndarray:
    """One grey uint8 slice [rows, columns] with 2-D masks drawn on it, as RGB uint8."""
    if image.ndim != 2 or image.dtype != np.uint8:
        raise InvalidInput(f"an overlay needs a grey uint8 slice, got {image.dtype} of shape {image.shape}")
    rgb = np.repeat(image[..., None], 3, axis=-1).astype(np.float32)
    for mask, colour in zip(masks, colours, strict=True):
        mask = np.asarray(mask, bool)
        if mask.shape != image.shape:
            raise InvalidInput(f"mask shape {mask.shape} differs from the slice's {image.shape}")
        colour_a = np.asarray(colour, np.float32)
        rgb[mask] = (1 - _FILL_ALPHA) * rgb[mask] + _FILL_ALPHA * colour_a
        rgb[_outline(mask)] = colour_a
    return np.round(rgb).astype(np.uint8)


def _outline(mask: np.ndarray) -> np.ndarray:
    padded = np.pad(mask, 1)
    interior = padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def write_png(
    path: Path,
    slices: np.ndarray,
    masks: Mapping[int, np.ndarray],
    colours: Mapping[int, tuple[int, int, int]],
    slice_index: int | None = None,
) -> Path:
    """Write one slice with its masks; by default the slice where the objects cover the most pixels."""
    from PIL import Image

    if slice_index is None:
        area = sum(np.asarray(m, bool).sum(axis=(1, 2)) for m in masks.values())
        slice_index = int(np.argmax(area)) if np.any(area) else slices.shape[0] // 2
    if not 0 <= slice_index < slices.shape[0]:
        raise InvalidInput(f"slice {slice_index} is out of range: the volume has {slices.shape[0]} slices")
    ids = sorted(masks)
    picture = blend(slices[slice_index], [masks[i][slice_index] for i in ids], [colours[i] for i in ids])
    return _save(path, lambda tmp: Image.fromarray(picture).save(tmp, format="PNG"))


def write_gif(
    path: Path,
    slices: np.ndarray,
    masks: Mapping[int, np.ndarray],
    colours: Mapping[int, tuple[int, int, int]],
    slice_range: tuple[int, int] | None = None,
) -> Path:
    """Write an animated GIF through a slice range (default: the slices any object covers)."""
    from PIL import Image

    ids = sorted(masks)
    if slice_range is None:
        covered = np.flatnonzero(sum(np.asarray(masks[i], bool).any(axis=(1, 2)) for i in ids))
        slice_range = (int(covered[0]), int(covered[-1])) if covered.size else (0, slices.shape[0] - 1)
    first, last = slice_range
    if not 0 <= first <= last < slices.shape[0]:
        raise InvalidInput(f"slice range {first},{last} is outside the volume's 0..{slices.shape[0] - 1}")
    frames = [
        Image.fromarray(blend(slices[k], [masks[i][k] for i in ids], [colours[i] for i in ids]))
        for k in range(first, last + 1)
    ]
    return _save(
        path,
        lambda tmp: frames[0].save(
            tmp, format="GIF", save_all=True, append_images=frames[1:], duration=_GIF_FRAME_MS, loop=0
        ),
    )


def _save(path: Path, writer) -> Path:  # noqa: ANN001 (a one-argument callable)
    return write_atomic(path, writer)
