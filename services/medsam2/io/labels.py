"""Per-object masks as one label volume, and the label map that says which object each value is.

One builder serves every label volume the product writes (GetResult, SaveAnnotation, ``medsam2 segment`` and
``medsam2 client`` files), with one overlap rule: **where objects overlap, the object with fewer voxels wins
(ties: the lower id)**, so an object lying inside another always survives. Measurements never come from a label
volume: each object is measured on its own mask (``io.measurements``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np

from medsam2.errors import InvalidInput, OutputNotWritable

OVERLAP_RULE = "where objects overlap, the object with fewer voxels wins (ties: the lower id)"
"""The rule written into every label map."""
MAX_LABEL = 65535
"""Label volumes are 16-bit."""
LABEL_MAP_VERSION = 1
NIFTI_EXTENSION_CODE = 6
"""The NIfTI extension code of the label map: 6, "comment" (NIfTI registers no JSON code); its content is JSON."""


class LabelValues(str, Enum):
    """What a label volume's values are."""

    OBJECT_IDS = "object_ids"
    """The value is the object id."""
    RANKS = "ranks"
    """Value i+1 is the i-th object id in id order (GetResult's historical default)."""


@dataclass(frozen=True, slots=True)
class LabelEntry:
    """One value of a label volume and the object it stands for."""

    value: int
    object_id: int
    name: str
    colour: tuple[int, int, int]


def paint_order(masks: Mapping[int, np.ndarray]) -> list[int]:
    """Object ids in the order they are painted (the last painted wins): most voxels first, higher id first on ties."""
    sizes = {obj_id: int(np.count_nonzero(mask)) for obj_id, mask in masks.items()}
    return sorted(masks, key=lambda obj_id: (-sizes[obj_id], -obj_id))


def label_values(object_ids: Sequence[int], values: LabelValues) -> dict[int, int]:
    """The label value of each object id.

    Raises
    ------
    InvalidInput
        An id below 1, or one that does not fit 16 bits when the values are the ids (``field`` "label_values").
    """
    ids = sorted(int(i) for i in object_ids)
    if ids and ids[0] < 1:
        raise InvalidInput(f"object ids must be 1 or more for a label volume, got {ids[0]}", field="object_id")
    if values is LabelValues.RANKS:
        if len(ids) > MAX_LABEL:
            raise InvalidInput(f"{len(ids)} objects do not fit a 16-bit label volume (at most {MAX_LABEL})")
        return {obj_id: rank for rank, obj_id in enumerate(ids, start=1)}
    too_large = [i for i in ids if i > MAX_LABEL]
    if too_large:
        raise InvalidInput(
            f"object id {too_large[0]} does not fit a 16-bit label volume whose values are object ids "
            f"(1..{MAX_LABEL}): ask for rank labels or for per-object masks",
            field="label_values",
        )
    return {obj_id: obj_id for obj_id in ids}


def build_labels(
    masks: Mapping[int, np.ndarray],
    shape: tuple[int, ...],
    values: LabelValues = LabelValues.OBJECT_IDS,
) -> np.ndarray:
    """Boolean masks per object -> one uint16 label volume of ``shape``, by the overlap rule (``OVERLAP_RULE``)."""
    value_of = label_values(list(masks), values)
    labels = np.zeros(shape, np.uint16)
    for obj_id in paint_order(masks):
        mask = np.asarray(masks[obj_id], bool)
        if mask.shape != tuple(shape):
            raise InvalidInput(f"object {obj_id}'s mask has shape {mask.shape}, the label volume {tuple(shape)}")
        labels[mask] = value_of[obj_id]
    return labels


def label_map(
    object_ids: Sequence[int],
    values: LabelValues = LabelValues.OBJECT_IDS,
    *,
    names: Mapping[int, str] | None = None,
    colours: Mapping[int, Sequence[int]] | None = None,
) -> list[LabelEntry]:
    """The label map of a label volume over ``object_ids``: value, object id, name and colour, in value order."""
    from medsam2.io.dicom_seg import default_segments  # the default names and palette colours of SEG segments

    value_of = label_values(object_ids, values)
    defaults = {s.obj_id: s for s in default_segments(sorted(value_of))} if value_of else {}
    entries = []
    for obj_id, value in sorted(value_of.items(), key=lambda item: item[1]):
        name = (names or {}).get(obj_id) or defaults[obj_id].label
        colour = tuple(int(c) for c in ((colours or {}).get(obj_id) or defaults[obj_id].colour))
        entries.append(LabelEntry(value, obj_id, name, colour))  # type: ignore[arg-type]
    return entries


def label_map_json(entries: Sequence[LabelEntry], values: LabelValues = LabelValues.OBJECT_IDS) -> str:
    """The label map as the JSON that travels with a label volume (NIfTI extension, npz key, ``.labels.json``)."""
    return json.dumps(
        {
            "medsam2_label_map": LABEL_MAP_VERSION,
            "values": values.value,
            "overlap": OVERLAP_RULE,
            "labels": [
                {"value": e.value, "object_id": e.object_id, "name": e.name, "colour_rgb": list(e.colour)}
                for e in entries
            ],
        },
        sort_keys=True,
    )


def labels_json_path(path: Path) -> Path:
    """``x.nii.gz`` / ``x.npz`` -> ``x.labels.json`` beside it."""
    path = Path(path)
    name = path.name
    for suffix in (".nii.gz", ".nii", ".npz", ".raw"):
        if name.lower().endswith(suffix):
            return path.with_name(name[: -len(suffix)] + ".labels.json")
    return path.with_name(path.stem + ".labels.json")


def write_labels_json(path: Path, entries: Sequence[LabelEntry], values: LabelValues = LabelValues.OBJECT_IDS) -> Path:
    """Write the label map beside the label volume at ``path``; returns the ``.labels.json`` path."""
    target = labels_json_path(path)
    try:
        target.write_text(label_map_json(entries, values) + "\n")
    except OSError as exc:
        raise OutputNotWritable(f"cannot write {target}: {exc.strerror or exc}") from exc
    return target
