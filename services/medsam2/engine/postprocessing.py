"""A session's post-processing choices, and MedSAM2's defaults for each kind of study.

MedSAM2's scripts differ by kind:
- 3D (``medsam2_infer_3D_CT.py``): sam2's ``apply_postprocessing=True`` (holes of up to 8 low-resolution pixels
  filled, prompted masks binarized before the memory encoder), then the largest 3D connected component;
  objects are segmented one at a time, so they may overlap.
- video (``medsam2_infer_video.py``, Meta's ``tools/vos_inference.py``): ``build_sam2_video_predictor`` with
  ``apply_postprocessing`` off (its flag is opt-in), so no hole filling and sigmoid (not binarized) memories of
  the prompted masks, and ``non_overlap_masks=true`` (DAVIS palette PNGs hold one object per pixel).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Literal

from medsam2.errors import InvalidInput

StudyKind = Literal["volume", "video"]

MAX_FILL_HOLE_AREA = 128 * 128
"""A hole can be at most the whole low-resolution mask."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PostProcessingOptions:
    """Every post-processing choice of one session, resolved (no field unset)."""

    largest_component: bool
    """Keep each object's largest 3D connected component (26-connected)."""
    fill_hole_area: int
    """Fill background islands of up to this many low-resolution pixels (sam2's fill_hole_area); 0: off."""
    non_overlapping_objects: bool
    """Give each pixel to the object with the largest logit (sam2's non-overlapping constraint)."""
    binarize_memory: bool
    """Binarize prompted masks before the memory encoder (sam2's binarize_mask_from_pts_for_mem_enc)."""


_DEFAULTS: dict[str, PostProcessingOptions] = {
    "volume": PostProcessingOptions(
        largest_component=True, fill_hole_area=8, non_overlapping_objects=False, binarize_memory=True
    ),
    "video": PostProcessingOptions(
        largest_component=False, fill_hole_area=0, non_overlapping_objects=True, binarize_memory=False
    ),
}


def resolve(kind: StudyKind | str, requested: Mapping[str, object] | object | None = None) -> PostProcessingOptions:
    """MedSAM2's defaults for ``kind``, overridden by each field ``requested`` sets.

    ``requested`` is a mapping of the fields a client set (``convert.postprocessing_from_pb``), or anything with
    the four attributes (the proto ``PostProcessing`` message, whose unset optional fields are skipped through
    ``HasField``, or a ``PostProcessingOptions``); ``None`` takes every default.

    Raises
    ------
    InvalidInput
        An unknown kind or field, or a ``fill_hole_area`` outside 0..16384 (``field`` names it).
    """
    if kind not in _DEFAULTS:
        raise InvalidInput(f"unknown study kind {kind!r}: expected one of {sorted(_DEFAULTS)}")
    values: dict[str, object] = {f.name: getattr(_DEFAULTS[kind], f.name) for f in fields(PostProcessingOptions)}
    if isinstance(requested, Mapping):
        for name, value in requested.items():
            if name not in values:
                raise InvalidInput(f"unknown post-processing option {name!r}: known are {sorted(values)}")
            values[name] = value
    elif requested is not None:
        has_field = getattr(requested, "HasField", None)
        for name in values:
            if has_field is not None and not has_field(name):
                continue
            value = getattr(requested, name, None)
            if value is not None:
                values[name] = value
    area = values["fill_hole_area"]
    if isinstance(area, bool) or not isinstance(area, int) or not 0 <= area <= MAX_FILL_HOLE_AREA:
        raise InvalidInput(
            f"postprocessing.fill_hole_area must be 0..{MAX_FILL_HOLE_AREA} low-resolution pixels, got {area!r}",
            field="header.postprocessing.fill_hole_area",
        )
    return PostProcessingOptions(
        largest_component=bool(values["largest_component"]),
        fill_hole_area=area,
        non_overlapping_objects=bool(values["non_overlapping_objects"]),
        binarize_memory=bool(values["binarize_memory"]),
    )
