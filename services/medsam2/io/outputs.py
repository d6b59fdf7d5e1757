"""Write a segmentation result in the format its file name asks for, with measurements beside it.

``.dcm`` is a DICOM SEG over the source series; ``.nii``/``.nii.gz`` and
``.npz`` are label volumes (object id per voxel, by ``io.labels``' one overlap
rule: fewer voxels wins) at the source geometry, with their label map inside and
in ``<name>.labels.json`` beside; ``.png``/``.gif`` are quick-look overlays.
Every result also gets ``<name>.measurements.json``: volume and RECIST per object,
each measured on its own mask.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from medsam2.errors import InvalidInput
from medsam2.io import overlays
from medsam2.io.dicom_seg import (
    Algorithm,
    SegmentSpec,
    build_seg,
    check_seg_possible,
    default_segments,
    write_seg,
)
from medsam2.io.labels import MAX_LABEL, LabelValues, build_labels, label_map_json, write_labels_json
from medsam2.io.labels import label_map as labels_for
from medsam2.io.measurements import measure_all, write_measurements
from medsam2.io.volumes import NIFTI_SUFFIXES, NPZ_SUFFIXES, Volume, check_mask_geometry, write_mask

SEG_SUFFIXES = (".dcm",)
OVERLAY_SUFFIXES = (".png", ".gif")
OUTPUT_SUFFIXES = (*SEG_SUFFIXES, *NIFTI_SUFFIXES, *NPZ_SUFFIXES, *OVERLAY_SUFFIXES)


def _kind(path: Path) -> str:
    name = Path(path).name.lower()
    for suffix in OUTPUT_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise InvalidInput(f"--out {Path(path).name}: the extension must be one of {', '.join(OUTPUT_SUFFIXES)}")


def check_output(path: Path, like: Volume | None = None, *, probe: bool = True) -> None:
    """Refuse an output name, or an output the volume cannot have, before any work is done.

    With ``like``, everything the output needs is checked: for a SEG, that a probe SEG over the source builds
    and validates (geometry, frame of reference, identity); ``probe=False`` skips that (used when writing).
    """
    kind = _kind(path)
    if like is None:
        return
    if kind in SEG_SUFFIXES:
        if like.dicom is None:
            raise InvalidInput(
                f"--out {Path(path).name}: a DICOM SEG needs a DICOM source, but the input is {like.source_format}; "
                "write .nii.gz or .npz instead"
            )
        if probe:
            check_seg_possible(like)
    elif kind in (*NIFTI_SUFFIXES, *NPZ_SUFFIXES):
        check_mask_geometry(like)


def measurements_path(path: Path) -> Path:
    """``x.dcm`` / ``x.nii.gz`` / ... -> ``x.measurements.json`` beside it."""
    path = Path(path)
    stem = path.name[: -len(_kind(path))]
    return path.with_name(f"{stem}.measurements.json")


def label_map(masks: Mapping[int, np.ndarray]) -> np.ndarray:
    """Boolean masks per object -> a label volume of object ids (uint8, or uint16 past id 255), by ``io.labels``."""
    ids = sorted(masks)
    if not ids:
        raise InvalidInput("no objects to write")
    if min(ids) < 1 or max(ids) > MAX_LABEL:
        raise InvalidInput(f"object ids must be 1..{MAX_LABEL} for a label map, got {ids}")
    labels = build_labels(masks, np.asarray(masks[ids[0]]).shape, LabelValues.OBJECT_IDS)
    return labels.astype(np.uint8) if max(ids) <= 255 else labels


def write_result(
    path: Path,
    masks: Mapping[int, np.ndarray],
    like: Volume,
    *,
    model_version: str,
    segments: Sequence[SegmentSpec] | None = None,
    display: np.ndarray | None = None,
) -> list[Path]:
    """Write the result and its measurements; returns the paths written."""
    path = Path(path)
    kind = _kind(path)
    check_output(path, like, probe=False)
    specs = {s.obj_id: s for s in (segments if segments is not None else default_segments(sorted(masks)))}
    extra: list[Path] = []
    if kind in SEG_SUFFIXES:
        seg = build_seg(masks, like, Algorithm(model_version), list(specs.values()))
        write_seg(path, seg, like.dicom)
    elif kind in OVERLAY_SUFFIXES:
        if display is None:
            raise InvalidInput(f"--out {path.name}: an overlay needs the uint8 slices that were segmented")
        colours = {i: specs[i].colour for i in masks}
        writer = overlays.write_png if kind == ".png" else overlays.write_gif
        writer(path, display, masks, colours)
    else:
        names, colours_of = {i: s.label for i, s in specs.items()}, {i: s.colour for i, s in specs.items()}
        entries = labels_for(sorted(masks), LabelValues.OBJECT_IDS, names=names, colours=colours_of)
        text = label_map_json(entries)
        write_mask(path, label_map(masks), like, label_map=text)
        extra.append(write_labels_json(path, entries))
    context: dict[str, object] = {
        "source": like.source_format,
        "spacing_mm": list(like.spacing),
        "model_version": model_version,
        "output": path.name,
    }
    if like.geometry is not None:
        context["plane"] = like.geometry.plane.value
    if like.dicom is not None:
        context["study_uid"], context["series_uid"] = like.dicom.study_uid, like.dicom.series_uid
    measured = measure_all(masks, like.spacing, {i: s.label for i, s in specs.items()})
    return [path, write_measurements(measurements_path(path), measured, **context), *extra]
