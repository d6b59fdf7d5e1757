"""A ``multipart/related`` body (WADO-RS) split into its parts as the bytes arrive.

Each part is yielded as soon as its closing delimiter is seen, so a caller can
parse one instance while the next is still on the wire, and only one part is
ever held.  A part's headers are bounded; a body that ends without the closing
delimiter is an error (``PacsTransferBroken``), never a shorter series.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from email.message import Message

from medsam2.pacs.errors import PacsBadResponse, PacsTransferBroken

MAX_PART_HEADER_BYTES = 16 * 1024
"""Headers of one part (Content-Type, Content-Length, ...): a few hundred bytes in practice."""


@dataclass(frozen=True, slots=True)
class Part:
    """One part: its media type (lower case, without parameters) and its bytes."""

    content_type: str
    body: bytes


def boundary_of(content_type: str, where: str) -> str:
    """The ``boundary`` parameter of a ``multipart/related`` Content-Type, or ``PacsBadResponse``."""
    message = Message()
    message["Content-Type"] = content_type
    if message.get_content_type() != "multipart/related":
        raise PacsBadResponse(f"{where}: content type {content_type.split(';')[0]!r}, not multipart/related")
    boundary = message.get_param("boundary")
    if not isinstance(boundary, str) or not 0 < len(boundary) <= 70:
        raise PacsBadResponse(f"{where}: a multipart/related answer without a usable boundary")
    return boundary


def parts(chunks: Iterable[bytes], boundary: str, where: str) -> Iterator[Part]:
    """The parts of a multipart body arriving as ``chunks`` (whose size the caller bounds)."""
    delimiter = b"\r\n--" + boundary.encode("latin-1")
    buffer = bytearray(b"\r\n")  # the first delimiter may open the body without a line break before it
    stream = iter(chunks)

    def more() -> bool:
        for data in stream:
            if data:
                buffer.extend(data)
                return True
        return False

    # Preamble: everything before the first delimiter is ignored.
    scanned = 0
    while (at := buffer.find(delimiter, scanned)) < 0:
        scanned = max(0, len(buffer) - len(delimiter))
        if scanned > MAX_PART_HEADER_BYTES:
            raise PacsBadResponse(f"{where}: no multipart delimiter in the first {scanned} bytes")
        if not more():
            raise PacsTransferBroken(f"{where}: the multipart body ended before its first part")
    del buffer[: at + len(delimiter)]
    while True:
        while len(buffer) < 2 and more():
            pass
        if buffer[:2] == b"--":
            return  # the closing delimiter: whatever follows is the epilogue
        # Transport padding, then the line break that ends the delimiter line.
        while (eol := buffer.find(b"\r\n")) < 0:
            if len(buffer) > MAX_PART_HEADER_BYTES or not more():
                raise _broken(where)
        if buffer[:eol].strip(b" \t"):
            raise PacsBadResponse(f"{where}: unexpected bytes after a multipart delimiter")
        del buffer[: eol + 2]
        while (end := buffer.find(b"\r\n\r\n")) < 0 and not buffer.startswith(b"\r\n"):
            if len(buffer) > MAX_PART_HEADER_BYTES:
                raise PacsBadResponse(f"{where}: a part's headers are longer than {MAX_PART_HEADER_BYTES} bytes")
            if not more():
                raise _broken(where)
        if buffer.startswith(b"\r\n"):
            head, body_at = b"", 2
        else:
            head, body_at = bytes(buffer[:end]), end + 4
        if body_at > MAX_PART_HEADER_BYTES:
            raise PacsBadResponse(f"{where}: a part's headers are longer than {MAX_PART_HEADER_BYTES} bytes")
        del buffer[:body_at]
        content_type = _part_type(head)
        scanned = 0
        while (at := buffer.find(delimiter, scanned)) < 0:
            scanned = max(0, len(buffer) - len(delimiter) + 1)
            if not more():
                raise _broken(where)
        with memoryview(buffer) as view:
            body = bytes(view[:at])  # one copy, not a slice and then a copy of the slice
        del buffer[: at + len(delimiter)]
        yield Part(content_type, body)
        del body


def _part_type(head: bytes) -> str:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-type":
            return value.decode("latin-1").split(";")[0].strip().lower()
    return ""


def _broken(where: str) -> PacsTransferBroken:
    return PacsTransferBroken(f"{where}: the multipart body ended in the middle of a part (no closing delimiter)")
