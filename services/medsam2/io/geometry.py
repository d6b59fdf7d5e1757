"""Where each voxel of a volume lies in patient space (DICOM's LPS, millimetres).

A volume is [slices, rows, columns].  Its geometry is DICOM's own description:
the position of voxel [0, 0, 0], the direction cosines of a row and a column
(``ImageOrientationPatient``), the pixel spacing, and the step from one slice
to the next.  The step is a full vector, not just a distance, so that a sheared
stack (gantry tilt) keeps its true geometry instead of being squared off.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np

from medsam2.errors import InvalidInput

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
"""NIfTI's world space is RAS; DICOM's is LPS: x and y change sign."""

_AXIS_TOLERANCE = 1e-3
"""Direction cosines within this of an axis count as that axis."""


class Plane(str, Enum):
    """The anatomical plane of a stack's slices."""

    AXIAL = "axial"
    CORONAL = "coronal"
    SAGITTAL = "sagittal"
    OBLIQUE = "oblique"


def _unit(vector: np.ndarray, what: str) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(norm) or norm < 1e-6:
        raise InvalidInput(f"{what} must be a non-zero vector, got {vector.tolist()}")
    return vector / norm


@dataclass(frozen=True, slots=True)
class Geometry:
    """Patient-space geometry of a volume [slices, rows, columns], in LPS millimetres."""

    origin: tuple[float, float, float]
    """Centre of voxel [0, 0, 0] (the first slice's ``ImagePositionPatient``)."""
    row_cosine: tuple[float, float, float]
    """Direction along a row, i.e. of increasing column index (``ImageOrientationPatient[0:3]``)."""
    column_cosine: tuple[float, float, float]
    """Direction down a column, i.e. of increasing row index (``ImageOrientationPatient[3:6]``)."""
    pixel_spacing: tuple[float, float]
    """(between rows, between columns) in mm, as DICOM's ``PixelSpacing``."""
    slice_step: tuple[float, float, float]
    """Vector from one slice's origin to the next's, in mm."""

    def __post_init__(self) -> None:
        row = _unit(np.asarray(self.row_cosine, float), "the row direction")
        col = _unit(np.asarray(self.column_cosine, float), "the column direction")
        if abs(float(row @ col)) > 1e-3:
            raise InvalidInput(f"row and column directions are not perpendicular: {row.tolist()} . {col.tolist()}")
        if min(self.pixel_spacing) <= 0:
            raise InvalidInput(f"pixel spacing must be positive, got {list(self.pixel_spacing)}")
        step = np.asarray(self.slice_step, float)
        if abs(float(np.cross(row, col) @ step)) < 1e-6:
            raise InvalidInput(f"the slice step {step.tolist()} lies in the slice plane: the stack has no depth")

    @classmethod
    def from_dicom(
        cls,
        position: np.ndarray,
        orientation: np.ndarray,
        pixel_spacing: np.ndarray,
        slice_step: np.ndarray,
    ) -> Geometry:
        """From ``ImagePositionPatient``, ``ImageOrientationPatient``, ``PixelSpacing`` and the slice step."""
        orientation = np.asarray(orientation, float)
        return cls(
            origin=_tuple3(position),
            row_cosine=_tuple3(_unit(orientation[:3], "ImageOrientationPatient's row direction")),
            column_cosine=_tuple3(_unit(orientation[3:], "ImageOrientationPatient's column direction")),
            pixel_spacing=(float(pixel_spacing[0]), float(pixel_spacing[1])),
            slice_step=_tuple3(slice_step),
        )

    @classmethod
    def from_nifti_affine(cls, affine: np.ndarray) -> Geometry:
        """From a NIfTI affine mapping (i, j, k) = (column, row, slice) to RAS."""
        lps = LPS_TO_RAS @ np.asarray(affine, float)
        col_step, row_step = lps[:3, 0], lps[:3, 1]
        return cls(
            origin=_tuple3(lps[:3, 3]),
            row_cosine=_tuple3(_unit(col_step, "the NIfTI affine's first column")),
            column_cosine=_tuple3(_unit(row_step, "the NIfTI affine's second column")),
            pixel_spacing=(float(np.linalg.norm(row_step)), float(np.linalg.norm(col_step))),
            slice_step=_tuple3(lps[:3, 2]),
        )

    @property
    def normal(self) -> np.ndarray:
        """Unit normal of the slices (row direction x column direction)."""
        return np.cross(np.asarray(self.row_cosine), np.asarray(self.column_cosine))

    @property
    def slice_spacing(self) -> float:
        """Distance between neighbouring slice planes in mm (along the normal)."""
        return abs(float(self.normal @ np.asarray(self.slice_step)))

    @property
    def spacing(self) -> tuple[float, float, float]:
        """(slice, row, column) spacing in mm, the order of ``Volume.spacing``."""
        return (self.slice_spacing, self.pixel_spacing[0], self.pixel_spacing[1])

    @property
    def sheared(self) -> bool:
        """True when slices are offset within their plane from one to the next (gantry tilt)."""
        step = np.asarray(self.slice_step)
        return float(np.linalg.norm(step - (self.normal @ step) * self.normal)) > 1e-3 * float(np.linalg.norm(step))

    @property
    def plane(self) -> Plane:
        """Axial, coronal or sagittal when the normal is along an axis, else oblique."""
        normal = np.abs(self.normal)
        axis = int(np.argmax(normal))
        if normal[axis] < 1 - _AXIS_TOLERANCE:
            return Plane.OBLIQUE
        return (Plane.SAGITTAL, Plane.CORONAL, Plane.AXIAL)[axis]

    def affine_lps(self) -> np.ndarray:
        """4x4 matrix from (column, row, slice, 1) to LPS mm (ITK's index order)."""
        affine = np.eye(4)
        affine[:3, 0] = np.asarray(self.row_cosine) * self.pixel_spacing[1]
        affine[:3, 1] = np.asarray(self.column_cosine) * self.pixel_spacing[0]
        affine[:3, 2] = self.slice_step
        affine[:3, 3] = self.origin
        return affine

    def affine_ras(self) -> np.ndarray:
        """The NIfTI affine: (i, j, k) = (column, row, slice) to RAS mm."""
        return LPS_TO_RAS @ self.affine_lps()

    def position(self, slice_index: int) -> np.ndarray:
        """``ImagePositionPatient`` of a slice."""
        return np.asarray(self.origin) + slice_index * np.asarray(self.slice_step)

    def image_orientation(self) -> list[float]:
        """``ImageOrientationPatient``: row direction then column direction."""
        return [*self.row_cosine, *self.column_cosine]


def _tuple3(values: np.ndarray) -> tuple[float, float, float]:
    a, b, c = (float(v) for v in np.asarray(values, float).reshape(3))
    return (a, b, c)
