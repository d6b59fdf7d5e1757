"""Intensities to uint8 slices exactly as MedSAM2's scripts prepare them: CT windows, MR/PET percentiles.

MedSAM2's ``medsam2_infer_3D_CT.py`` (and MedSAM's training-data preprocessing)
clips a CT volume to the window, min-max scales *the clipped volume* to 0..255
and casts with a truncating ``np.uint8``; MR and PET use the 0.5-99.5
percentiles of the voxels > 0 as the bounds, with the same scaling and cast.
The min-max runs over the whole clipped volume, so it equals the window only
when the study reaches both window bounds.  The arithmetic is float64, as the
script's (nibabel ``get_fdata``), which makes the result bit-identical to it.

Video (ultrasound, endoscopy, photographs) is used unchanged.  With the preset
'auto', ``resolve_preset`` picks one from the DICOM Modality
(``MODALITY_PRESETS``); any explicit preset or a custom window overrides it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np

from medsam2.errors import InvalidInput


@dataclass(frozen=True, slots=True)
class Window:
    """A CT display window in Hounsfield units."""

    width: float
    level: float


CT_WINDOWS: dict[str, Window] = {
    "brain": Window(80, 40),
    "abdomen": Window(400, 40),
    "bone": Window(1800, 400),
    "lung": Window(1500, -600),
    "mediastinum": Window(400, 40),
}
"""The paper's presets."""


class Preset(str, Enum):
    """How a volume's intensities become uint8."""

    AUTO = "auto"
    BRAIN = "brain"
    ABDOMEN = "abdomen"
    BONE = "bone"
    LUNG = "lung"
    MEDIASTINUM = "mediastinum"
    PERCENTILE = "percentile"
    NONE = "none"


MODALITY_PRESETS: dict[str, Preset] = {
    "CT": Preset.ABDOMEN,
    "MR": Preset.PERCENTILE,
    "PT": Preset.PERCENTILE,
    "NM": Preset.PERCENTILE,
    "US": Preset.NONE,
    "XC": Preset.NONE,
    "ES": Preset.NONE,
    "OT": Preset.NONE,
}
"""What 'auto' means per DICOM Modality: abdomen is the paper's general-purpose CT window."""


def resolve_preset(
    preset: Preset | str,
    modality: str | None,
    dtype: np.dtype | None = None,
    *,
    is_video: bool = False,
) -> Preset:
    """The concrete preset for ``preset`` ('auto' included): the one rule used by segment, client and service.

    'auto' picks by DICOM Modality when known (``MODALITY_PRESETS``); without one,
    a video is 'none' and a volume is 'none' when already uint8, else 'percentile'.
    Data that are not uint8 never resolve to 'none' (e.g. 16-bit ultrasound).
    """
    try:
        preset = Preset(preset)
    except ValueError:
        choices = ", ".join(p.value for p in Preset)
        raise InvalidInput(
            f"unknown intensity preset {preset!r}: choose one of {choices}", field="header.preprocessing.preset"
        ) from None
    if preset is not Preset.AUTO:
        return preset
    is_uint8 = dtype is None or np.dtype(dtype) == np.uint8
    chosen = MODALITY_PRESETS.get(normalize_modality(modality) or "")
    if chosen is None:
        chosen = Preset.NONE if (is_video or is_uint8) else Preset.PERCENTILE
    if chosen is Preset.NONE and not is_uint8:
        chosen = Preset.PERCENTILE  # 'none' needs 0..255
    return chosen


def normalize_modality(modality: str | None) -> str | None:
    """A DICOM Modality code in upper case, or None when not given (empty counts as not given)."""
    if modality is None or not modality.strip():
        return None
    return modality.strip().upper()


def window_bounds(window: Window) -> tuple[float, float]:
    """The window's (lower, upper) bounds in HU: level -/+ width/2."""
    if not window.width > 0:
        raise InvalidInput(f"window width must be positive, got {window.width:g}")
    return window.level - window.width / 2, window.level + window.width / 2


def apply_window(volume: np.ndarray, window: Window) -> np.ndarray:
    """Clip to the window, min-max the clipped volume to 0..255 and truncate to uint8 (MedSAM2's CT steps)."""
    low, high = window_bounds(window)
    return clip_and_scale(volume, low, high)


def percentile_bounds(volume: np.ndarray, low_pct: float = 0.5, high_pct: float = 99.5) -> tuple[float, float] | None:
    """The percentiles of the voxels > 0, as MedSAM2 computes them for MR and PET; None when no voxel is > 0."""
    foreground = volume[volume > 0].astype(
        np.float64
    )  # float64: integer lerp could overflow, and the script's is float
    if foreground.size == 0:
        return None
    low, high = np.percentile(foreground, [low_pct, high_pct])
    return float(low), float(high)


def apply_percentiles(volume: np.ndarray, low_pct: float = 0.5, high_pct: float = 99.5) -> np.ndarray:
    """Clip to the percentiles of the voxels > 0, min-max the clipped volume and truncate to uint8 (MR, PET)."""
    bounds = percentile_bounds(volume, low_pct, high_pct)
    if bounds is None:
        return np.zeros(volume.shape, np.uint8)
    return clip_and_scale(volume, *bounds)


def clip_and_scale(volume: np.ndarray, low: float, high: float, *, chunk_voxels: int = 1 << 22) -> np.ndarray:
    """``np.uint8((x - x.min()) / (x.max() - x.min()) * 255.0)`` with ``x = np.clip(volume, low, high)`` in float64.

    The same operations in the same order as MedSAM2's script, slice block by
    slice block so a large study never needs a whole float64 copy.  A clipped
    volume with one value (max == min) becomes all zeros instead of NaN.
    """
    # min/max of the clipped volume are the clipped min/max of the volume: no float copy needed for them.
    lowest = min(max(float(volume.min()), low), high)
    highest = min(max(float(volume.max()), low), high)
    out = np.zeros(volume.shape, np.uint8)
    if highest <= lowest:
        return out
    span = np.float64(highest) - np.float64(lowest)
    per_slice = max(1, int(np.prod(volume.shape[1:])))
    step = max(1, chunk_voxels // per_slice)
    for start in range(0, volume.shape[0], step):
        x = np.clip(volume[start : start + step].astype(np.float64), low, high)
        out[start : start + step] = ((x - np.float64(lowest)) / span * 255.0).astype(np.uint8)
    return out


def to_uint8(
    volume: np.ndarray,
    preset: Preset | str = Preset.AUTO,
    window: Window | None = None,
    modality: str | None = None,
    *,
    is_video: bool = False,
) -> np.ndarray:
    """Turn a volume [slices, rows, columns] into uint8 slices with a preset (auto: ``resolve_preset``) or a window."""
    check_volume(volume)
    if window is not None:
        return apply_window(volume, window)
    preset = resolve_preset(preset, modality, volume.dtype, is_video=is_video)
    if preset is Preset.NONE:
        if volume.dtype != np.uint8:
            if volume.min() < 0 or volume.max() > 255:
                raise InvalidInput(f"preset 'none' needs values in 0..255, got {volume.min():g}..{volume.max():g}")
        return volume.astype(np.uint8)
    if preset is Preset.PERCENTILE:
        return apply_percentiles(volume)
    return apply_window(volume, CT_WINDOWS[preset.value])


def check_volume(volume: np.ndarray) -> None:
    """Raise ``InvalidInput`` for an empty, non-numeric or non-finite volume."""
    if volume.ndim != 3:
        raise InvalidInput(f"expected a 3-D volume [slices, rows, columns], got shape {volume.shape}")
    if volume.shape[0] == 0:
        raise InvalidInput("the volume has zero slices")
    if volume.size == 0:
        raise InvalidInput(f"the volume is empty: shape {volume.shape}")
    if not np.issubdtype(volume.dtype, np.number) or np.issubdtype(volume.dtype, np.complexfloating):
        raise InvalidInput(f"the volume must hold real numbers, got {volume.dtype}")
    if np.issubdtype(volume.dtype, np.floating):
        bad = ~np.isfinite(volume)
        if bad.any():
            z = int(np.argwhere(bad)[0][0])
            raise InvalidInput(f"the volume has {int(bad.sum())} NaN or infinite values (first on slice {z})")
