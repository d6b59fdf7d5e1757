"""Conversions between protobuf messages and domain types: the only module that imports both."""

from __future__ import annotations

from typing import TypedDict

import numpy as np
from pydicom.sr.coding import Code

from medsam2.api.masks import decode_rle, encode_rle, pack_bits, unpack_bits
from medsam2.api.pb.medsam2.v1 import segmentation_pb2 as pb
from medsam2.engine.postprocessing import PostProcessingOptions
from medsam2.engine.prompts import Box
from medsam2.engine.protocols import ObjectPrompt
from medsam2.engine.tracker import Direction
from medsam2.errors import InvalidInput, InvalidPrompt
from medsam2.io.dicom_seg import SegmentSpec
from medsam2.io.geometry import Geometry

DTYPES: dict[int, np.dtype] = {
    pb.DATA_TYPE_UINT8: np.dtype("<u1"),
    pb.DATA_TYPE_INT16: np.dtype("<i2"),
    pb.DATA_TYPE_UINT16: np.dtype("<u2"),
    pb.DATA_TYPE_INT32: np.dtype("<i4"),
    pb.DATA_TYPE_FLOAT32: np.dtype("<f4"),
    pb.DATA_TYPE_FLOAT64: np.dtype("<f8"),
}
DTYPE_OF = {v: k for k, v in DTYPES.items()}
DIRECTIONS = {
    pb.DIRECTION_UNSPECIFIED: Direction.BOTH,
    pb.DIRECTION_FORWARD: Direction.FORWARD,
    pb.DIRECTION_BACKWARD: Direction.BACKWARD,
    pb.DIRECTION_BOTH: Direction.BOTH,
}


def header_shape(header: pb.StudyHeader) -> tuple[int, ...]:
    """The study shape of an upload header, checked: [slices, rows, columns], or [frames, rows, columns, 3] (RGB)."""
    shape = tuple(int(v) for v in header.shape)
    if len(shape) == 4:
        if header.kind != pb.STUDY_KIND_VIDEO or header.dtype != pb.DATA_TYPE_UINT8 or shape[3] != 3:
            raise InvalidInput(
                f"header.shape {list(shape)}: four axes are an RGB video, [frames, rows, columns, 3] with kind "
                "VIDEO and dtype UINT8",
                field="header.shape",
            )
    elif len(shape) != 3:
        raise InvalidInput(f"header.shape must be [slices, rows, columns], got {list(shape)}", field="header.shape")
    if shape[0] == 0:
        raise InvalidInput("the study has zero slices", field="header.shape")
    if min(shape) == 0:
        raise InvalidInput(f"header.shape has an empty axis: {list(shape)}", field="header.shape")
    return shape


def header_dtype(header: pb.StudyHeader) -> np.dtype:
    """The voxel dtype of an upload header, checked."""
    if header.dtype not in DTYPES:
        allowed = [pb.DataType.Name(value) for value in sorted(DTYPES)]  # DATA_TYPE_UNSPECIFIED is not a choice
        raise InvalidInput(f"header.dtype must be one of {', '.join(allowed)}", field="header.dtype")
    return DTYPES[header.dtype]


def header_spacing(header: pb.StudyHeader) -> tuple[float, float, float]:
    """Voxel spacing (mm), 1 mm when not given."""
    if not header.spacing_mm:
        return (1.0, 1.0, 1.0)
    spacing = tuple(float(v) for v in header.spacing_mm)
    if len(spacing) != 3 or not all(np.isfinite(spacing)) or min(spacing) <= 0:
        raise InvalidInput(
            f"header.spacing_mm must be three positive numbers, got {list(spacing)}", field="header.spacing_mm"
        )
    return spacing  # type: ignore[return-value]


def encode_mask(mask: np.ndarray, encoding: int) -> pb.Mask:
    """A boolean slice mask as a compact message."""
    rows, columns = mask.shape
    if encoding == pb.MASK_ENCODING_RLE:
        return pb.Mask(rows=rows, columns=columns, encoding=pb.MASK_ENCODING_RLE, data=encode_rle(mask))
    return pb.Mask(rows=rows, columns=columns, encoding=pb.MASK_ENCODING_BITPACKED, data=pack_bits(mask))


def decode_mask(message: pb.Mask) -> np.ndarray:
    """A mask message as a boolean array."""
    if message.encoding == pb.MASK_ENCODING_RLE:
        return decode_rle(message.data, message.rows, message.columns)
    return unpack_bits(message.data, message.rows, message.columns)


def prompt_from_pb(request: pb.AddPromptRequest) -> ObjectPrompt:
    """The domain prompt of an AddPrompt request (validated again by the engine)."""
    if request.object_id == 0:
        # 0 is proto3's default: a request that forgot the field, not an object.
        raise InvalidPrompt("object_id must be 1 or more (0 is the unset default)", field="object_id")
    has_box = request.HasField("box")
    has_mask = request.HasField("mask")
    if has_mask and (has_box or request.points):
        raise InvalidPrompt("give either a mask or a box/points, not both", field="mask")
    if not (has_box or has_mask or request.points):
        raise InvalidPrompt("the prompt is empty: give a box, points or a mask", field="box")
    box = Box(request.box.x0, request.box.y0, request.box.x1, request.box.y1) if has_box else None
    points = labels = None
    if request.points:
        points = np.array([[p.x, p.y] for p in request.points], np.float32)
        labels = np.array([1 if p.positive else 0 for p in request.points], np.int32)
    mask = decode_mask(request.mask) if has_mask else None
    return ObjectPrompt(int(request.object_id), int(request.slice), box=box, points=points, labels=labels, mask=mask)


def geometry_from_pb(header: pb.StudyHeader, spacing: tuple[float, float, float]) -> Geometry | None:
    """The patient geometry an upload header states, or None; ``InvalidInput`` naming a bad vector."""
    if not header.HasField("geometry"):
        return None
    g = header.geometry
    vectors = {
        "origin": g.origin,
        "row_direction": g.row_direction,
        "column_direction": g.column_direction,
        "slice_step": g.slice_step,
    }
    for name, values in vectors.items():
        if len(values) != 3 or not all(np.isfinite(values)):
            raise InvalidInput(
                f"header.geometry.{name} must be three finite numbers, got {list(values)}",
                field=f"header.geometry.{name}",
            )
    return Geometry.from_dicom(
        np.asarray(g.origin),
        np.asarray([*g.row_direction, *g.column_direction]),
        np.asarray(spacing[1:]),
        np.asarray(g.slice_step),
    )


def geometry_to_pb(geometry: Geometry | None) -> pb.PatientGeometry | None:
    """A geometry as its message (None stays unset)."""
    if geometry is None:
        return None
    return pb.PatientGeometry(
        origin=list(geometry.origin),
        row_direction=list(geometry.row_cosine),
        column_direction=list(geometry.column_cosine),
        slice_step=list(geometry.slice_step),
    )


class StudyIdentity(TypedDict):
    """The DICOM identity an upload header may state."""

    frame_of_reference_uid: str
    study_uid: str
    series_uid: str
    sop_instance_uids: tuple[str, ...]


def identity_from_pb(header: pb.StudyHeader, slices: int) -> StudyIdentity:
    """The DICOM identity fields of an upload header, checked against its slice count."""
    uids = tuple(header.sop_instance_uids)
    if uids and len(uids) != slices:
        raise InvalidInput(f"header.sop_instance_uids has {len(uids)} UIDs for {slices} slices: give one per slice")
    for name in ("frame_of_reference_uid", "study_uid", "series_uid"):
        _check_uid(getattr(header, name), f"header.{name}")
    for uid in uids:
        _check_uid(uid, "header.sop_instance_uids")
    if len(set(uids)) != len(uids):
        raise InvalidInput("header.sop_instance_uids repeats a UID: each slice is its own instance")
    return StudyIdentity(
        frame_of_reference_uid=header.frame_of_reference_uid,
        study_uid=header.study_uid,
        series_uid=header.series_uid,
        sop_instance_uids=uids,
    )


def _check_uid(uid: str, where: str) -> None:
    if uid and (len(uid) > 64 or not all(part.isdigit() for part in uid.split("."))):
        raise InvalidInput(f"{where} {uid!r} is not a DICOM UID (digits and dots, at most 64 characters)")


def segment_spec_from_pb(obj_id: int, info: pb.ObjectInfo, default: SegmentSpec) -> SegmentSpec:
    """An object's SEG segment from AddPrompt's object_info, over ``default`` for what it leaves unset."""
    colour = default.colour
    if info.colour_rgb:
        if len(info.colour_rgb) != 3:
            raise InvalidInput(f"object_info.colour_rgb must be [r, g, b], got {list(info.colour_rgb)}")
        colour = tuple(int(c) for c in info.colour_rgb)  # type: ignore[assignment]
    return SegmentSpec(
        obj_id=obj_id,
        label=info.label or default.label,
        colour=colour,
        category=_code(info.category, "category") if info.HasField("category") else default.category,
        property_type=_code(info.type, "type") if info.HasField("type") else default.property_type,
    )


def _code(concept: pb.CodedConcept, name: str) -> Code:
    if not (concept.value and concept.scheme and concept.meaning):
        raise InvalidInput(
            f"object_info.{name} needs value, scheme and meaning, got "
            f"({concept.value!r}, {concept.scheme!r}, {concept.meaning!r})"
        )
    if len(concept.value) > 64 or len(concept.scheme) > 16 or len(concept.meaning) > 64:
        raise InvalidInput(
            f"object_info.{name} is too long: value and meaning at most 64 characters, scheme at most 16"
        )
    return Code(concept.value, concept.scheme, concept.meaning)


def postprocessing_from_pb(message: pb.PostProcessing) -> dict[str, object]:
    """The post-processing fields a request set (unset ones take the study kind's defaults)."""
    names = ("largest_component", "fill_hole_area", "non_overlapping_objects", "binarize_memory")
    return {name: getattr(message, name) for name in names if message.HasField(name)}


def postprocessing_to_pb(options: PostProcessingOptions) -> pb.PostProcessing:
    """Resolved post-processing as its message, every field set."""
    return pb.PostProcessing(
        largest_component=options.largest_component,
        fill_hole_area=options.fill_hole_area,
        non_overlapping_objects=options.non_overlapping_objects,
        binarize_memory=options.binarize_memory,
    )
