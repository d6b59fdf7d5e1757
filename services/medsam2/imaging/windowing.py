"""Intensities to uint8 slices as MedSAM2 prepares them: CT windows, MR/PET percentiles.

CT uses a window (width/level in Hounsfield units) clipped and scaled to 0..255;
MR and PET use the 0.5-99.5 percentiles of the non-zero voxels; video
(ultrasound, endoscopy, photographs) is used unchanged.  With the preset
'auto' the DICOM Modality picks one (``MODALITY_PRESETS``); any explicit preset
or a custom window overrides it.
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


def resolve_preset(preset: Preset | str, modality: str | None, dtype: np.dtype) -> Preset:
    """The concrete preset for 'auto': by modality when known, else 'none' for uint8 and 'percentile' otherwise."""
    try:
        preset = Preset(preset)
    except ValueError:
        choices = ", ".join(p.value for p in Preset)
        raise InvalidInput(f"unknown intensity preset {preset!r}: choose one of {choices}") from None
    if preset is not Preset.AUTO:
        return preset
    chosen = MODALITY_PRESETS.get((modality or "").upper())
    if chosen is Preset.NONE and dtype != np.uint8:
        chosen = Preset.PERCENTILE  # e.g. 16-bit ultrasound: 'none' needs 0..255
    if chosen is not None:
        return chosen
    return Preset.NONE if dtype == np.uint8 else Preset.PERCENTILE


def apply_window(volume: np.ndarray, window: Window) -> np.ndarray:
    """Clip to [level - width/2, level + width/2] and scale to uint8."""
    if window.width <= 0:
        raise InvalidInput(f"window width must be positive, got {window.width:g}")
    low = window.level - window.width / 2
    scaled = (np.clip(volume.astype(np.float32), low, low + window.width) - low) / window.width * 255.0
    return np.round(scaled).astype(np.uint8)


def apply_percentiles(volume: np.ndarray, low_pct: float = 0.5, high_pct: float = 99.5) -> np.ndarray:
    """Clip to the percentiles of the non-zero voxels and scale to uint8 (MR, PET)."""
    foreground = volume[volume != 0]
    if foreground.size == 0:
        return np.zeros(volume.shape, np.uint8)
    low, high = np.percentile(foreground, [low_pct, high_pct])
    if high <= low:
        return np.where(volume > low, 255, 0).astype(np.uint8)
    scaled = (np.clip(volume.astype(np.float32), low, high) - low) / (high - low) * 255.0
    return np.round(scaled).astype(np.uint8)


def to_uint8(
    volume: np.ndarray,
    preset: Preset | str = Preset.AUTO,
    window: Window | None = None,
    modality: str | None = None,
) -> np.ndarray:
    """Turn a volume [slices, rows, columns] into uint8 slices with a preset (auto: by modality) or a window."""
    check_volume(volume)
    if window is not None:
        return apply_window(volume, window)
    preset = resolve_preset(preset, modality, volume.dtype)
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
