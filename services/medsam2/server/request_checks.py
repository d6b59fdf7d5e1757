"""Checks of a request's surface before any work: enum values, string lengths, chunk sizes.

Proto3 enums are open: a value the server does not know arrives as a plain
integer. Every such value is INVALID_ARGUMENT here, for every message, so no
RPC can silently fall back to a default or fail later as INTERNAL.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from medsam2.api.pb.medsam2.v1 import segmentation_pb2 as pb
from medsam2.errors import InvalidInput, InvalidPrompt

STRING_LIMITS = {"session_id": 128, "label": 256}
"""Longest value of string fields with these names (characters)."""
DEFAULT_STRING_LIMIT = 1024
"""Longest value of any other string field."""
MIN_CHUNK_BYTES = 4096
"""Smallest ``chunk_bytes`` a client may ask for (0 means the server's default)."""
_MAX_DEPTH = 8
_WITH_SESSION = ("GetSession", "AddPrompt", "Propagate", "GetResult", "ResetObjects", "StoreResult", "SaveAnnotation")
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    f"medsam2.v1.{name}Request": ("session_id",) for name in (*_WITH_SESSION, "GetImage")
}
"""Fields a request is refused without (their proto3 default is never valid), by message full name.

The gateway's OpenAPI document marks them ``required``; tests check that the server refuses each one's absence.
``CloseSession`` is not here: closing an unknown (or unnamed) session is not an error.
"""


def check_request(message: Message) -> None:
    """Raise ``InvalidInput`` (naming the field) for an unknown enum value, an over-long string or a tiny chunk size."""
    _check(message, "", 0)


def _check(message: Message, prefix: str, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise InvalidInput(f"{prefix or 'request'} is nested too deeply", field=prefix)
    for field, value in message.ListFields():
        path = f"{prefix}{field.name}"
        values = value if field.is_repeated else [value]
        if field.type == FieldDescriptor.TYPE_ENUM:
            known = field.enum_type.values_by_number
            for item in values:
                if item not in known:
                    names = ", ".join(v.name for v in field.enum_type.values if v.number != 0)
                    raise InvalidInput(f"{path} has the unknown value {item}: use one of {names}", field=path)
        elif field.type == FieldDescriptor.TYPE_STRING:
            limit = STRING_LIMITS.get(field.name, DEFAULT_STRING_LIMIT)
            for item in values:
                if len(item) > limit:
                    raise InvalidInput(f"{path} is {len(item)} characters long; the limit is {limit}", field=path)
        elif field.type == FieldDescriptor.TYPE_MESSAGE and not field.message_type.GetOptions().map_entry:
            for item in values:
                _check(item, f"{path}.", depth + 1)
        elif field.name == "chunk_bytes" and 0 < value < MIN_CHUNK_BYTES:
            raise InvalidInput(f"{path} must be 0 (the default) or at least {MIN_CHUNK_BYTES}, got {value}", field=path)


def check_prompt_mask(request: Message, tracker: Any) -> None:
    """Refuse a mask prompt whose claimed size or byte count does not fit the slice, before decoding anything."""
    if not request.HasField("mask"):
        return
    mask = request.mask
    rows, columns = tracker.height, tracker.width
    if (mask.rows, mask.columns) != (rows, columns):
        raise InvalidPrompt(
            f"mask is {mask.rows}x{mask.columns} but the study's slices are {rows}x{columns}", field="mask.rows"
        )
    pixels = rows * columns
    if mask.encoding == pb.MASK_ENCODING_RLE:
        # One uint32 per run; a slice of N pixels has at most N + 1 runs.
        if len(mask.data) % 4 or len(mask.data) // 4 > pixels + 1:
            raise InvalidPrompt(
                f"RLE mask has {len(mask.data)} bytes: not whole uint32 runs, or more runs than "
                f"the {pixels} pixels of a slice",
                field="mask.data",
            )
    elif len(mask.data) != (pixels + 7) // 8:
        raise InvalidPrompt(
            f"bit-packed mask of {rows}x{columns} needs {(pixels + 7) // 8} bytes, got {len(mask.data)}",
            field="mask.data",
        )
