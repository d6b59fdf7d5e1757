"""The in-memory study every reader returns and every writer takes: voxels, spacing, geometry, source headers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medsam2.io.dicom_source import DicomSource
from medsam2.io.geometry import Geometry


@dataclass(slots=True)
class Volume:
    """Voxels [slices, rows, columns] with spacing (z, y, x) in mm and the source's geometry."""

    voxels: np.ndarray
    spacing: tuple[float, float, float]
    source_format: str
    nifti_affine: np.ndarray | None = None
    nifti_header: Any = None
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    modality: str | None = None
    """DICOM Modality (CT, MR, PT, US, ...) when known; it picks the intensity preset."""
    geometry: Geometry | None = None
    """Patient-space geometry (DICOM and NIfTI sources); None for npz and video."""
    dicom: DicomSource | None = None
    """The source DICOM objects, for results that reference them (DICOM SEG)."""
    rgb: np.ndarray | None = None
    """A colour video's frames [frames, rows, columns, 3] uint8 as the model sees them; ``voxels`` then hold their
    luma (for display, SEG and measurements). None for grey studies (and colour whose channels are all equal)."""
    frame_names: tuple[str, ...] = ()
    """A frame folder's file names without suffix, in frame order (per-frame PNG masks are named after them)."""

    @property
    def voxel_ml(self) -> float:
        """Volume of one voxel in millilitres."""
        return float(np.prod(self.spacing)) / 1000.0
