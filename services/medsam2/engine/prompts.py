"""Prompts in the slice's own pixel coordinates, validated before they touch any state."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medsam2.errors import InvalidPrompt
from medsam2.graphs import (
    IMAGE_SIZE,
    LOW_RES,
    MAX_POINTS,
    POINT_LABEL_BOX_BOTTOM_RIGHT,
    POINT_LABEL_BOX_TOP_LEFT,
    POINT_LABEL_NEGATIVE,
    POINT_LABEL_PAD,
    POINT_LABEL_POSITIVE,
    POINT_LABEL_UNUSED,
)


@dataclass(frozen=True, slots=True)
class Box:
    """A box in pixel coordinates of the slice: x is the column, y the row."""

    x0: float
    y0: float
    x1: float
    y1: float


@dataclass(frozen=True, slots=True)
class ModelPoints:
    """Points in the 512-pixel model input, with sam2 labels, ready for the SAM heads."""

    coords: np.ndarray  # [N, 2] float32
    labels: np.ndarray  # [N] int32

    @property
    def count(self) -> int:
        """Number of points (a box counts two)."""
        return int(self.labels.shape[0])

    def then(self, other: ModelPoints) -> ModelPoints:
        """These points followed by ``other`` (sam2's ``concat_points``)."""
        return ModelPoints(np.concatenate([self.coords, other.coords]), np.concatenate([self.labels, other.labels]))


def check_frame(frame: int, num_frames: int) -> None:
    """Raise ``InvalidPrompt`` unless ``frame`` indexes a slice of the study."""
    if not isinstance(frame, (int, np.integer)) or not 0 <= frame < num_frames:
        raise InvalidPrompt(
            f"slice {frame} is out of range: the study has {num_frames} slices (0..{num_frames - 1})", field="slice"
        )


def to_model_points(
    height: int,
    width: int,
    box: Box | None = None,
    points: np.ndarray | None = None,
    labels: np.ndarray | None = None,
) -> ModelPoints:
    """Validate a box and/or clicks on a ``height`` x ``width`` slice and scale them to the model input."""
    if box is None and points is None:
        raise InvalidPrompt("a prompt needs a box, points, or both")
    coords: list[np.ndarray] = []
    kinds: list[np.ndarray] = []
    if box is not None:
        coords.append(_box_corners(box, height, width))
        kinds.append(np.array([POINT_LABEL_BOX_TOP_LEFT, POINT_LABEL_BOX_BOTTOM_RIGHT], np.int32))
    if points is not None:
        pts, lab = _clicks(points, labels, height, width)
        coords.append(pts)
        kinds.append(lab)
    xy = np.concatenate(coords).astype(np.float32)
    all_labels = np.concatenate(kinds).astype(np.int32)
    if all_labels.shape[0] > MAX_POINTS:
        raise InvalidPrompt(
            f"too many points on one slice: {all_labels.shape[0]} (a box counts 2), at most {MAX_POINTS}",
            field="points",
        )
    return ModelPoints(scale_to_model(xy, height, width), all_labels)


def scale_to_model(xy: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pixel (x, y) on the slice -> (x, y) on the 512 model input, in float32 as sam2 does."""
    size = np.array([width, height], np.float32)
    return (xy.astype(np.float32) / size * np.float32(IMAGE_SIZE)).astype(np.float32)


def _box_corners(box: Box, height: int, width: int) -> np.ndarray:
    values = np.array([box.x0, box.y0, box.x1, box.y1], np.float64)
    if not np.all(np.isfinite(values)):
        shown = ", ".join(f"{v:g}" for v in values.tolist())  # plain floats: "nan", not "np.float64(nan)"
        raise InvalidPrompt(f"box ({shown}) has a non-finite coordinate", field="box")
    if box.x1 <= box.x0 or box.y1 <= box.y0:
        raise InvalidPrompt(
            f"box ({box.x0:g}, {box.y0:g}, {box.x1:g}, {box.y1:g}) is empty: need x0 < x1 and y0 < y1", field="box"
        )
    if box.x0 < 0 or box.y0 < 0 or box.x1 > width or box.y1 > height:
        raise InvalidPrompt(
            f"box ({box.x0:g}, {box.y0:g}, {box.x1:g}, {box.y1:g}) is outside the {width}x{height} slice "
            f"(x in 0..{width}, y in 0..{height})",
            field="box",
        )
    return values.reshape(2, 2).astype(np.float32)


def _clicks(points: np.ndarray, labels: np.ndarray | None, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    pts = np.asarray(points, np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or pts.shape[0] == 0:
        raise InvalidPrompt(f"points must be a non-empty list of (x, y) pairs, got shape {pts.shape}", field="points")
    if labels is None:
        raise InvalidPrompt("points need labels (1 positive, 0 negative)")
    lab = np.asarray(labels)
    if lab.shape != (pts.shape[0],):
        raise InvalidPrompt(f"{pts.shape[0]} points but {lab.size} labels")
    if not np.all(np.isin(lab, [POINT_LABEL_NEGATIVE, POINT_LABEL_POSITIVE])):
        raise InvalidPrompt(f"point labels must be 1 (positive) or 0 (negative), got {sorted(set(lab.tolist()))}")
    if not np.all(np.isfinite(pts)):
        raise InvalidPrompt("a point has a non-finite coordinate", field="points")
    outside = (pts[:, 0] < 0) | (pts[:, 0] > width) | (pts[:, 1] < 0) | (pts[:, 1] > height)
    if np.any(outside):
        x, y = pts[np.argmax(outside)]
        raise InvalidPrompt(f"point ({x:g}, {y:g}) is outside the {width}x{height} slice", field="points")
    return pts.astype(np.float32), lab.astype(np.int32)


def check_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Validate a mask prompt for a ``height`` x ``width`` slice; returns it as float32 0/1."""
    array = np.asarray(mask)
    if array.shape != (height, width):
        raise InvalidPrompt(
            f"mask has shape {array.shape}, the slice is {(height, width)} (rows, columns)", field="mask"
        )
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise InvalidPrompt("mask has NaN or infinite values")
    binary = (array > 0).astype(np.float32) if array.dtype != np.bool_ else array.astype(np.float32)
    if not binary.any():
        raise InvalidPrompt("mask is empty: a mask prompt needs at least one foreground pixel", field="mask")
    return binary


def prompt_inputs(prompts: Sequence[ModelPoints | None], masks: Sequence[np.ndarray | None]) -> dict[str, np.ndarray]:
    """Pack one prompt (or none) and one low-res mask prompt (or none) per object into the SAM heads' slots."""
    batch = len(prompts)
    coords = np.zeros((batch, MAX_POINTS, 2), np.float32)
    labels = np.full((batch, MAX_POINTS), POINT_LABEL_UNUSED, np.int32)
    mask_input = np.zeros((batch, 1, LOW_RES, LOW_RES), np.float32)
    has_mask = np.zeros(batch, np.float32)
    for i, (prompt, mask) in enumerate(zip(prompts, masks, strict=False)):
        if prompt is None:
            labels[i, 0] = POINT_LABEL_PAD  # sam2 feeds one "not a point" when there are no clicks
        else:
            coords[i, : prompt.count] = prompt.coords
            labels[i, : prompt.count] = prompt.labels
        if mask is not None:
            mask_input[i, 0] = mask
            has_mask[i] = 1.0
    return {"point_coords": coords, "point_labels": labels, "mask_input": mask_input, "has_mask_input": has_mask}
