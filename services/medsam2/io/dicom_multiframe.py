"""Per-frame geometry and rescale of a multi-frame DICOM object.

Enhanced objects (Enhanced CT/MR, Legacy Converted Enhanced, ...) describe
each frame in functional groups: a per-frame item overrides the shared one.
Older multi-frame objects (e.g. NM) may instead state one position and
orientation with ``SpacingBetweenSlices``.  Frames with no position at all
(ultrasound cine, endoscopy) are a time series: ``frame_planes`` returns None.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydicom.dataset import Dataset

from medsam2.io.errors import IrregularStack
from medsam2.io.stacking import PlaneInfo


def number_of_frames(ds: Dataset) -> int:
    """NumberOfFrames, 1 when absent."""
    return int(ds.get("NumberOfFrames", 1) or 1)


def _functional(ds: Dataset, frame: int, sequence: str) -> Dataset | None:
    """A frame's functional-group macro: the per-frame item if present, else the shared one."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and frame < len(per_frame):
        macro = per_frame[frame].get(sequence)
        if macro:
            return macro[0]
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        macro = shared[0].get(sequence)
        if macro:
            return macro[0]
    return None


def frame_planes(ds: Dataset, label: str) -> list[PlaneInfo] | None:
    """Each frame's plane, or None when the frames carry no position (a cine loop)."""
    frames = number_of_frames(ds)
    shape = (int(ds.Rows), int(ds.Columns))
    if "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds:
        return _enhanced_planes(ds, label, frames, shape)
    if "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds and "SpacingBetweenSlices" in ds:
        orientation = np.asarray(ds.ImageOrientationPatient, float)
        normal = np.cross(orientation[:3], orientation[3:])
        start = np.asarray(ds.ImagePositionPatient, float)
        step = normal / np.linalg.norm(normal) * float(ds.SpacingBetweenSlices)
        spacing = _pair(ds.get("PixelSpacing", [1.0, 1.0]))
        return [
            PlaneInfo(f"{label} frame {i + 1}", _triple(start + i * step), tuple(orientation), spacing, shape)
            for i in range(frames)
        ]
    return None


def _enhanced_planes(ds: Dataset, label: str, frames: int, shape: tuple[int, int]) -> list[PlaneInfo] | None:
    planes = []
    for i in range(frames):
        position = _functional(ds, i, "PlanePositionSequence")
        orientation = _functional(ds, i, "PlaneOrientationSequence")
        measures = _functional(ds, i, "PixelMeasuresSequence")
        if position is None or orientation is None:
            if i == 0:
                return None
            raise IrregularStack(f"{label}: frame {i + 1} has no plane position or orientation but frame 1 has")
        if measures is None or "PixelSpacing" not in measures:
            raise IrregularStack(f"{label}: frame {i + 1} has no PixelSpacing in its Pixel Measures macro")
        planes.append(
            PlaneInfo(
                f"{label} frame {i + 1}",
                _triple(position.ImagePositionPatient),
                tuple(float(v) for v in orientation.ImageOrientationPatient),
                _pair(measures.PixelSpacing),
                shape,
            )
        )
    return planes


def frame_thickness(ds: Dataset) -> float | None:
    """SliceThickness of the first frame, if stated."""
    measures = _functional(ds, 0, "PixelMeasuresSequence")
    value = measures.get("SliceThickness") if measures is not None else ds.get("SliceThickness")
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None  # an unreadable thickness is as good as none: the geometry's spacing is used


def frame_rescale(ds: Dataset) -> tuple[list[float], list[float]]:
    """Each frame's RescaleSlope and RescaleIntercept (1 and 0 when absent)."""
    slopes, intercepts = [], []
    for i in range(number_of_frames(ds)):
        transform = _functional(ds, i, "PixelValueTransformationSequence")
        source = transform if transform is not None else ds
        slopes.append(float(source.get("RescaleSlope", 1) or 1))
        intercepts.append(float(source.get("RescaleIntercept", 0) or 0))
    return slopes, intercepts


def _pair(values: Sequence[float]) -> tuple[float, float]:
    a, b = (float(v) for v in values)
    return (a, b)


def _triple(values: Sequence[float]) -> tuple[float, float, float]:
    a, b, c = (float(v) for v in values)
    return (a, b, c)
