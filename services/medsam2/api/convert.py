"""Conversions between protobuf messages and domain types: the only module that imports both."""

from __future__ import annotations

import numpy as np

from medsam2.api.masks import decode_rle, encode_rle, pack_bits, unpack_bits
from medsam2.api.pb.medsam2.v1 import segmentation_pb2 as pb
from medsam2.engine.prompts import Box
from medsam2.engine.protocols import ObjectPrompt
from medsam2.engine.tracker import Direction
from medsam2.errors import InvalidInput, InvalidPrompt

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


def header_shape(header: pb.StudyHeader) -> tuple[int, int, int]:
    """The study shape of an upload header, checked."""
    shape = tuple(int(v) for v in header.shape)
    if len(shape) != 3:
        raise InvalidInput(f"header.shape must be [slices, rows, columns], got {list(shape)}")
    if shape[0] == 0:
        raise InvalidInput("the study has zero slices")
    if min(shape) == 0:
        raise InvalidInput(f"header.shape has an empty axis: {list(shape)}")
    return shape  # type: ignore[return-value]


def header_dtype(header: pb.StudyHeader) -> np.dtype:
    """The voxel dtype of an upload header, checked."""
    if header.dtype not in DTYPES:
        raise InvalidInput(f"header.dtype must be set to one of {sorted(pb.DataType.keys())[1:]}")
    return DTYPES[header.dtype]


def header_spacing(header: pb.StudyHeader) -> tuple[float, float, float]:
    """Voxel spacing (mm), 1 mm when not given."""
    if not header.spacing_mm:
        return (1.0, 1.0, 1.0)
    spacing = tuple(float(v) for v in header.spacing_mm)
    if len(spacing) != 3 or not all(np.isfinite(spacing)) or min(spacing) <= 0:
        raise InvalidInput(f"header.spacing_mm must be three positive numbers, got {list(spacing)}")
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
    has_box = request.HasField("box")
    has_mask = request.HasField("mask")
    if has_mask and (has_box or request.points):
        raise InvalidPrompt("give either a mask or a box/points, not both")
    if not (has_box or has_mask or request.points):
        raise InvalidPrompt("the prompt is empty: give a box, points or a mask")
    box = Box(request.box.x0, request.box.y0, request.box.x1, request.box.y1) if has_box else None
    points = labels = None
    if request.points:
        points = np.array([[p.x, p.y] for p in request.points], np.float32)
        labels = np.array([1 if p.positive else 0 for p in request.points], np.int32)
    mask = decode_mask(request.mask) if has_mask else None
    return ObjectPrompt(int(request.object_id), int(request.slice), box=box, points=points, labels=labels, mask=mask)
