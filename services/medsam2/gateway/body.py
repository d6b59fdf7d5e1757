"""A request body read as its client declared it (Content-Length or chunked), never past a limit.

Nothing here reads a byte before the caller asks: the gateway checks the caller's credentials and the declared
length first, and only then opens the body (``Expect: 100-continue`` is answered at that moment, so a client
that waits for it sends nothing to a caller who will be refused).

Uploads may carry their header in the body (``application/vnd.medsam2.upload``): a 4-byte big-endian unsigned
length N, then N bytes of the header as UTF-8 proto JSON, then the data. The header is then bounded only by
the JSON limit (``--max-message-bytes``), not by the HTTP server's 64 KiB header limit.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from typing import Protocol


class Readable(Protocol):
    """What the body reads from: the connection's buffered reader."""

    def read(self, size: int = -1, /) -> bytes: ...

    def readline(self, size: int = -1, /) -> bytes: ...


FRAMED_UPLOAD_TYPE = "application/vnd.medsam2.upload"
"""Content type of an upload whose body starts with its length-prefixed JSON header."""
FRAME_PREFIX_BYTES = 4
_CONTENT_LENGTH = re.compile(r"[0-9]{1,19}")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(;[^\r\n]*)?\r?\n")
_MAX_CHUNK_LINE = 4096
_MAX_TRAILER_LINES = 64


class BodyError(Exception):
    """A body the gateway refuses: its HTTP status, ``ErrorInfo`` reason (the catalogue gives its status) and
    message."""

    def __init__(self, http_status: int, message: str, *, reason: str, field: str = "body") -> None:
        super().__init__(message)
        self.http_status = http_status
        self.reason = reason
        self.field = field
        """The part of the request at fault (``BadRequest.field``): the body unless a header is named."""


def too_large(limit: int, what: str = "the body") -> BodyError:
    """413: ``what`` is over ``limit`` bytes."""
    return BodyError(413, f"{what} is larger than {limit} bytes", reason="BODY_TOO_LARGE")


def malformed(message: str) -> BodyError:
    """400: the body's framing is broken."""
    return BodyError(400, message, reason="MALFORMED_REQUEST")


class RequestBody:
    """The body of one request: ``read(n)`` gives at most ``n`` bytes, ``b""`` at its end.

    Raises ``BodyError`` when the declared framing is malformed or the body passes ``limit`` bytes; a chunked
    body is bounded as it arrives (it declares no length in advance).
    """

    def __init__(
        self, rfile: Readable, *, length: int | None, chunked: bool, limit: int, on_open: Callable[[], None]
    ) -> None:
        self._rfile = rfile
        self._left = length if length is not None else 0  # bytes left in the body or in the current chunk
        self._chunked = chunked
        self._limit = limit
        self._on_open = on_open
        self._opened = False
        self._read = 0
        self._ended = not chunked and not length

    @classmethod
    def declared(cls, rfile: Readable, headers, *, limit: int, on_open: Callable[[], None]) -> RequestBody:  # noqa: ANN001
        """The body as the headers declare it; raises ``BodyError`` on a malformed or too large declaration."""
        encoding = (headers.get("Transfer-Encoding") or "").strip().lower()
        lengths = headers.get_all("Content-Length") or []
        if encoding:
            if encoding != "chunked":
                raise BodyError(
                    501,
                    f"Transfer-Encoding {encoding!r}: only chunked is served",
                    reason="UNSUPPORTED_PROTOCOL",
                    field="Transfer-Encoding",
                )
            if lengths:  # both: a request-smuggling shape (RFC 9112 6.3)
                raise malformed("send either Content-Length or Transfer-Encoding: chunked, not both")
            return cls(rfile, length=None, chunked=True, limit=limit, on_open=on_open)
        if not lengths:
            return cls(rfile, length=0, chunked=False, limit=limit, on_open=on_open)
        if len(set(lengths)) != 1 or not _CONTENT_LENGTH.fullmatch(lengths[0].strip()):
            raise malformed(f"Content-Length must be one decimal number of bytes, got {', '.join(lengths)[:64]!r}")
        length = int(lengths[0])
        if length > limit:
            raise too_large(limit)
        return cls(rfile, length=length, chunked=False, limit=limit, on_open=on_open)

    @property
    def finished(self) -> bool:
        """True once the whole body has been read (the connection can carry another request)."""
        return self._ended

    @property
    def declared_left(self) -> int:
        """Bytes of a Content-Length body not read yet (0 for a chunked one, whose length nobody declared)."""
        return 0 if self._chunked or self._ended else self._left

    @property
    def bytes_read(self) -> int:
        """Body bytes read so far."""
        return self._read

    def read(self, size: int) -> bytes:
        """At most ``size`` bytes of the body; ``b""`` at its end. A client that stops early is a ``BodyError``."""
        if self._ended or size <= 0:
            return b""
        if not self._opened:
            self._opened = True
            self._on_open()
        if self._chunked and self._left == 0:
            self._left = self._next_chunk()
            if self._left == 0:
                self._ended = True
                return b""
        data = self._rfile.read(min(size, self._left))
        if not data:
            raise malformed(f"the body ended after {self._read} bytes, before its declared end")
        self._left -= len(data)
        self._read += len(data)
        if self._read > self._limit:
            raise too_large(self._limit)
        if self._left == 0:
            if self._chunked:
                if self._rfile.readline(3) not in (b"\r\n", b"\n"):
                    raise malformed("a chunk of the chunked body does not end with CRLF")
            else:
                self._ended = True
        return data

    def read_all(self) -> bytes:
        """The whole body (already bounded by ``limit``)."""
        parts = []
        while chunk := self.read(1 << 20):
            parts.append(chunk)
        return b"".join(parts)

    def read_exactly(self, size: int) -> bytes:
        """Exactly ``size`` bytes, or a ``BodyError`` when the body ends first."""
        parts, need = [], size
        while need:
            chunk = self.read(need)
            if not chunk:
                raise malformed(f"the body ended {need} bytes short of its {size}-byte part")
            parts.append(chunk)
            need -= len(chunk)
        return b"".join(parts)

    def _next_chunk(self) -> int:
        line = self._rfile.readline(_MAX_CHUNK_LINE)
        match = _CHUNK_SIZE.fullmatch(line)
        if match is None:
            raise malformed("a chunk size line of the chunked body is not a hexadecimal size")
        size = int(match.group(1), 16)
        if size == 0:
            for _ in range(_MAX_TRAILER_LINES):
                trailer = self._rfile.readline(_MAX_CHUNK_LINE)
                if trailer in (b"\r\n", b"\n"):
                    return 0
                if not trailer.endswith(b"\n"):
                    break
            raise malformed("the chunked body's trailer does not end with an empty line")
        if self._read + size > self._limit:
            raise too_large(self._limit)
        return size


def framed_header(body: RequestBody, limit: int) -> bytes:
    """The JSON header at the start of a framed upload (4-byte big-endian length, then that many bytes)."""
    (length,) = struct.unpack(">I", body.read_exactly(FRAME_PREFIX_BYTES))
    if length > limit:
        raise too_large(limit, f"the upload's header ({length} bytes)")
    return body.read_exactly(length)
