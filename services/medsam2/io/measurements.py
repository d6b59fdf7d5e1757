"""Per-object measurements in physical units: volume (mL) and RECIST diameters (mm).

RECIST 1.1 measures a lesion on the axial slice where it is longest:

- the long axis is the longest distance between two points of the object on a
  slice (its maximum Feret diameter, via the convex hull);
- the short axis is the longest segment perpendicular to the long axis that
  lies entirely within the object, on the same slice.

Each pixel counts as the rectangle it covers (pixel spacing may differ between
rows and columns), so a single pixel measures its diagonal, not zero.  The
slices are the volume's own: axial for the usual CT/MR stacks; ``plane`` in the
result says which plane they were when the geometry is known.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from medsam2.errors import InvalidInput
from medsam2.io.atomic import write_text_atomic

_SHORT_AXIS_STEPS = 8
"""Samples per pixel along and across the long axis when searching for the short axis."""
_MAX_SAMPLES = 1000
"""At most this many lines and samples per line (large objects: resolution 0.1% of the long axis)."""


@dataclass(frozen=True, slots=True)
class Recist:
    """The RECIST measurement of one object on its slice; endpoints are (row, column) pixel coordinates."""

    slice: int
    long_axis_mm: float
    short_axis_mm: float
    long_axis_endpoints: tuple[tuple[float, float], tuple[float, float]]
    short_axis_endpoints: tuple[tuple[float, float], tuple[float, float]]


@dataclass(frozen=True, slots=True)
class ObjectMeasurements:
    """An object's size: voxels, volume in mL, slices it spans, and its RECIST diameters."""

    obj_id: int
    label: str
    voxels: int
    volume_ml: float
    slices: tuple[int, int] | None
    recist: Recist | None


def measure(mask: np.ndarray, spacing: Sequence[float], obj_id: int = 1, label: str = "") -> ObjectMeasurements:
    """Measure one boolean mask [slices, rows, columns] with spacing (slice, row, column) in mm."""
    mask = np.asarray(mask, bool)
    if mask.ndim != 3:
        raise InvalidInput(f"a mask must be [slices, rows, columns], got shape {mask.shape}")
    dz, dy, dx = (float(s) for s in spacing)
    if min(dz, dy, dx) <= 0:
        raise InvalidInput(f"spacing must be positive, got {list(spacing)}")
    voxels = int(mask.sum())
    filled = np.flatnonzero(mask.any(axis=(1, 2)))
    span = (int(filled[0]), int(filled[-1])) if filled.size else None
    best: Recist | None = None
    if filled.size:
        longest = [(longest_diameter(mask[k], dy, dx), int(k)) for k in filled]
        (long_mm, ends), k = max(longest, key=lambda item: item[0][0])  # ties: the first such slice
        short_mm, short_ends = perpendicular_axis(mask[k], dy, dx, ends)
        best = Recist(k, round(long_mm, 3), round(short_mm, 3), ends, short_ends)
    return ObjectMeasurements(
        obj_id, label or f"object {obj_id}", voxels, round(voxels * dz * dy * dx / 1000.0, 6), span, best
    )


def _corners(plane: np.ndarray) -> np.ndarray:
    """Corners (row, column) of the object's boundary pixels, in pixel units."""
    padded = np.pad(plane, 1)
    interior = padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    rows, cols = np.nonzero(plane & ~interior)
    offsets = np.array([[-0.5, -0.5], [-0.5, 0.5], [0.5, -0.5], [0.5, 0.5]])
    return (np.stack([rows, cols], axis=1)[:, None, :] + offsets[None]).reshape(-1, 2)


def longest_diameter(plane: np.ndarray, dy: float, dx: float) -> tuple[float, tuple[tuple[float, float], ...]]:
    """Maximum Feret diameter in mm of a 2-D mask and its endpoints (row, column)."""
    from scipy.spatial import ConvexHull, QhullError

    points = np.unique(_corners(plane), axis=0)
    physical = points * np.array([dy, dx])
    try:
        vertices = ConvexHull(physical).vertices
        hull, chosen = physical[vertices], points[vertices]
    except (QhullError, ValueError):  # collinear points: every point is on the "hull"
        hull, chosen = physical, points
    distances = np.linalg.norm(hull[:, None, :] - hull[None, :, :], axis=-1)
    i, j = np.unravel_index(int(np.argmax(distances)), distances.shape)
    ends = (tuple(float(v) for v in chosen[i]), tuple(float(v) for v in chosen[j]))
    return float(distances[i, j]), ends  # type: ignore[return-value]


def perpendicular_axis(
    plane: np.ndarray, dy: float, dx: float, long_ends: tuple[tuple[float, float], ...]
) -> tuple[float, tuple[tuple[float, float], tuple[float, float]]]:
    """Longest segment within the mask perpendicular to the long axis: length in mm and endpoints."""
    a, b = (np.asarray(e) * np.array([dy, dx]) for e in long_ends)
    length = float(np.linalg.norm(b - a))
    if length == 0:
        return 0.0, ((0.0, 0.0), (0.0, 0.0))
    along = (b - a) / length
    across = np.array([-along[1], along[0]])
    rows, cols = np.nonzero(plane)
    centres = np.stack([rows, cols], axis=1) * np.array([dy, dx])
    reach = float(np.max(np.abs((centres - a) @ across))) + max(dy, dx)
    step = max(min(dy, dx) / _SHORT_AXIS_STEPS, max(length, 2 * reach) / _MAX_SAMPLES)
    offsets = np.arange(0.0, length + step, step)
    spans = np.arange(-reach, reach + step, step)
    points = a + offsets[:, None, None] * along + spans[None, :, None] * across  # [line, sample, 2] in mm
    r = np.floor(points[..., 0] / dy + 0.5).astype(int)
    c = np.floor(points[..., 1] / dx + 0.5).astype(int)
    valid = (r >= 0) & (r < plane.shape[0]) & (c >= 0) & (c < plane.shape[1])
    inside = np.zeros(r.shape, np.int32)
    inside[valid] = plane[r[valid], c[valid]]
    # Length of the run of inside samples ending at each sample, per line.
    count = np.cumsum(inside, axis=1)
    run = count - np.maximum.accumulate(np.where(inside == 0, count, 0), axis=1)
    line = int(np.argmax(run.max(axis=1)))
    top = int(run[line].max())
    if top == 0:
        return 0.0, ((0.0, 0.0), (0.0, 0.0))
    end = int(np.argmax(run[line]))
    p = points[line, end - top + 1] - across * step / 2
    q = points[line, end] + across * step / 2
    ends = ((float(p[0] / dy), float(p[1] / dx)), (float(q[0] / dy), float(q[1] / dx)))
    return top * step, ends


def measure_all(
    masks: Mapping[int, np.ndarray], spacing: Sequence[float], labels: Mapping[int, str] | None = None
) -> list[ObjectMeasurements]:
    """Measure every object."""
    labels = labels or {}
    return [measure(masks[obj_id], spacing, obj_id, labels.get(obj_id, "")) for obj_id in sorted(masks)]


def to_json(measurements: Sequence[ObjectMeasurements], **context: object) -> dict[str, object]:
    """The JSON document: context (source, plane, model) and one entry per object."""
    return {**context, "objects": [asdict(m) for m in measurements]}


def write_measurements(path: Path, measurements: Sequence[ObjectMeasurements], **context: object) -> Path:
    """Write the measurements as JSON, atomically."""
    return write_text_atomic(path, json.dumps(to_json(measurements, **context), indent=2) + "\n")
