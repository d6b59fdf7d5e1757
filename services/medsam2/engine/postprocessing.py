"""Post-processing options of a session, and MedSAM2's defaults for each kind of study, in one place."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

from medsam2.errors import InvalidInput

MAX_FILL_HOLE_AREA = 128 * 128
"""A hole can be no larger than the whole low-resolution mask (128 x 128 pixels)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PostProcessingOptions:
    """How a session's masks are post-processed; every field set."""

    largest_component: bool
    """Keep each object's largest 3D connected component (26-connectivity) after the 3D protocol's passes."""
    fill_hole_area: int
    """Fill background islands of up to this many low-resolution pixels with logit 0.1 (0: off)."""
    non_overlapping_objects: bool
    """Give each pixel to the object with the largest logit (sam2's ``non_overlap_masks``)."""
    binarize_memory: bool
    """Binarize prompted masks before the memory encoder (sam2's ``binarize_mask_from_pts_for_mem_enc``)."""


_DEFAULTS = {
    # MedSAM2's 3D script keeps the largest 3D component; sam2's video predictor (build_sam2_video_predictor)
    # fills holes of up to 8 pixels, binarizes prompted masks for the memory and lets objects overlap.
    "volume": PostProcessingOptions(
        largest_component=True, fill_hole_area=8, non_overlapping_objects=False, binarize_memory=True
    ),
    "video": PostProcessingOptions(
        largest_component=False, fill_hole_area=8, non_overlapping_objects=False, binarize_memory=True
    ),
}


def resolve(kind: str, requested: Mapping[str, object] | None = None) -> PostProcessingOptions:
    """The options of a study of ``kind`` ("volume" or "video"): ``requested`` (set fields only) over its defaults.

    Raises
    ------
    InvalidInput
        An unknown kind or field, or a ``fill_hole_area`` outside 0..16384 (``field`` names it).
    """
    if kind not in _DEFAULTS:
        raise InvalidInput(f"study kind must be one of {sorted(_DEFAULTS)}, got {kind!r}")
    values = {f.name: getattr(_DEFAULTS[kind], f.name) for f in fields(PostProcessingOptions)}
    for name, value in (requested or {}).items():
        if name not in values:
            raise InvalidInput(f"unknown post-processing option {name!r}: known are {sorted(values)}")
        values[name] = value
    area = values["fill_hole_area"]
    if not isinstance(area, int) or isinstance(area, bool) or not 0 <= area <= MAX_FILL_HOLE_AREA:
        raise InvalidInput(
            f"postprocessing.fill_hole_area must be 0..{MAX_FILL_HOLE_AREA} low-resolution pixels, got {area!r}",
            field="header.postprocessing.fill_hole_area",
        )
    return PostProcessingOptions(**values)  # type: ignore[arg-type]
