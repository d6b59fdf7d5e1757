"""Order 2-D planes into one regular 3-D stack, or say exactly why they are not one.

Planes are sorted by their position along the slice normal (the cross product
of ``ImageOrientationPatient``'s two directions, dotted with
``ImagePositionPatient``), never by instance number or file name: scanners and
PACS number and name files in many ways.  A stack is accepted only if every
plane has the same orientation, size and pixel spacing and the positions step
by one constant vector; that vector may leave the normal (gantry tilt), in
which case the geometry keeps it rather than squaring the stack off.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medsam2.io.errors import IrregularStack, MissingSlices
from medsam2.io.geometry import Geometry

log = logging.getLogger(__name__)

ORIENTATION_TOLERANCE = 1e-3
"""Direction cosines may differ by this much between planes (DS values are rounded)."""
GAP_FACTOR = 1.5
"""A step this many times the typical one means slices are missing."""


@dataclass(frozen=True, slots=True)
class PlaneInfo:
    """One plane's geometry as DICOM states it, and a label naming it in messages."""

    label: str
    position: tuple[float, float, float]
    orientation: tuple[float, ...]
    pixel_spacing: tuple[float, float]
    shape: tuple[int, int]


def _step_tolerance(step: float) -> float:
    # Positions are decimal strings of at most 16 characters, often written with
    # 2-3 decimals, so allow a little rounding on top of a relative tolerance.
    return max(0.02, 0.02 * step)


def stack_planes(planes: Sequence[PlaneInfo], what: str, thickness: float | None = None) -> tuple[list[int], Geometry]:
    """Sort planes along the normal; return their order and the stack's geometry."""
    if not planes:
        raise IrregularStack(f"{what} has no image planes")
    first = planes[0]
    _check_same(planes, what)
    orientation = np.asarray(first.orientation, float)
    normal = np.cross(orientation[:3], orientation[3:])
    normal /= np.linalg.norm(normal)
    positions = np.array([p.position for p in planes], float)
    along = positions @ normal
    order = [int(i) for i in np.argsort(along, kind="stable")]
    if len(planes) == 1:
        step = normal * (thickness if thickness and thickness > 0 else 1.0)
        return order, Geometry.from_dicom(positions[0], orientation, np.asarray(first.pixel_spacing), step)
    sorted_pos = positions[order]
    sorted_along = along[order]
    gaps = np.diff(sorted_along)
    labels = [planes[i].label for i in order]
    _check_positions(gaps, sorted_along, labels, what)
    steps = np.diff(sorted_pos, axis=0)
    mean_step = steps.mean(axis=0)
    typical = float(np.median(gaps))
    off_line = np.linalg.norm(steps - mean_step, axis=1)
    worst = int(np.argmax(off_line))
    if off_line[worst] > _step_tolerance(typical):
        raise IrregularStack(
            f"{what}: slice positions do not lie on one straight line: the step from {labels[worst]} to "
            f"{labels[worst + 1]} is {np.round(steps[worst], 3).tolist()} mm, the mean step "
            f"{np.round(mean_step, 3).tolist()} mm; the series is not one regular stack"
        )
    # Mean over the whole run: rounding errors in single positions average out.
    step_vector = (sorted_pos[-1] - sorted_pos[0]) / (len(planes) - 1)
    geometry = Geometry.from_dicom(sorted_pos[0], orientation, np.asarray(first.pixel_spacing), step_vector)
    if geometry.sheared:
        # Not named at WARNING: for PACS input ``what`` holds the series UID, which is logged at DEBUG only.
        log.warning(
            "the series is a sheared stack (gantry tilt): each slice is offset in-plane by %s mm; the "
            "geometry keeps the offset, resample before using tools that assume orthogonal axes",
            np.round(step_vector - (normal @ step_vector) * normal, 3).tolist(),
        )
        log.debug("the sheared stack is %s", what)
    return order, geometry


def _check_same(planes: Sequence[PlaneInfo], what: str) -> None:
    first = planes[0]
    if len(first.orientation) != 6:
        raise IrregularStack(f"{what}: {first.label} has no valid ImageOrientationPatient (6 numbers)")
    for plane in planes[1:]:
        if plane.shape != first.shape:
            raise IrregularStack(
                f"{what}: {plane.label} is {plane.shape[0]}x{plane.shape[1]} pixels but {first.label} is "
                f"{first.shape[0]}x{first.shape[1]}; a stack needs one slice size"
            )
        if np.max(np.abs(np.subtract(plane.orientation, first.orientation))) > ORIENTATION_TOLERANCE:
            raise IrregularStack(
                f"{what}: {plane.label} has ImageOrientationPatient {list(plane.orientation)} but {first.label} has "
                f"{list(first.orientation)}; planes of different orientations (e.g. a localizer) are not one stack"
            )
        if not np.allclose(plane.pixel_spacing, first.pixel_spacing, rtol=1e-4, atol=1e-5):
            raise IrregularStack(
                f"{what}: {plane.label} has PixelSpacing {list(plane.pixel_spacing)} but {first.label} has "
                f"{list(first.pixel_spacing)}"
            )


def _check_positions(gaps: np.ndarray, along: np.ndarray, labels: list[str], what: str) -> None:
    typical = float(np.median(gaps))
    if typical < 1e-3:
        raise IrregularStack(
            f"{what}: {int(np.sum(gaps < 1e-3)) + 1} planes share the same position along the normal; "
            "this looks like a time series or several acquisitions of one slice, not a 3-D stack"
        )
    tolerance = _step_tolerance(typical)
    for k, gap in enumerate(gaps):
        if gap < tolerance:
            raise IrregularStack(
                f"{what}: {labels[k]} and {labels[k + 1]} are both at {along[k]:.3f} mm along the normal; "
                "two acquisitions (or a duplicated slice) are mixed in one series"
            )
    for k, gap in enumerate(gaps):
        if gap > GAP_FACTOR * typical:
            missing = int(round(gap / typical)) - 1
            raise MissingSlices(
                f"{what}: gap of {gap:.3f} mm between {labels[k]} (at {along[k]:.3f} mm) and {labels[k + 1]} "
                f"(at {along[k + 1]:.3f} mm) where the spacing is {typical:.3f} mm: about {max(missing, 1)} "
                "slice(s) missing"
            )
    spread = np.abs(gaps - typical)
    worst = int(np.argmax(spread))
    if spread[worst] > tolerance:
        raise IrregularStack(
            f"{what}: slice spacing varies from {gaps.min():.3f} to {gaps.max():.3f} mm (between {labels[worst]} "
            f"and {labels[worst + 1]}); a regular stack has one spacing"
        )
