"""Request bodies as their client declared them: Content-Length or chunked, never read past the limit."""

from __future__ import annotations

import io
import struct
from email.message import Message

import pytest

from medsam2.gateway.body import BodyError, RequestBody, framed_header


def _headers(**values: str) -> Message:
    headers = Message()
    for name, value in values.items():
        headers[name.replace("_", "-")] = value
    return headers


def _body(raw: bytes, limit: int = 1000, **headers: str) -> tuple[RequestBody, list[int]]:
    opened: list[int] = []
    body = RequestBody.declared(
        io.BufferedReader(io.BytesIO(raw)), _headers(**headers), limit=limit, on_open=lambda: opened.append(1)
    )
    return body, opened


def test_a_content_length_body_is_read_to_its_end_and_opened_only_when_read() -> None:
    body, opened = _body(b"hello, next request", Content_Length="5")
    assert opened == [] and not body.finished
    assert body.read_all() == b"hello" and body.finished and opened == [1]


def test_a_chunked_body_is_reassembled_and_its_trailer_read() -> None:
    raw = b"3\r\nabc\r\n1;ext=1\r\nd\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT"
    body, _ = _body(raw, Transfer_Encoding="chunked")
    assert body.read_all() == b"abcd" and body.finished


@pytest.mark.parametrize(
    ("headers", "status", "match"),
    [
        ({"Content_Length": "abc"}, 400, "one decimal number"),
        ({"Content_Length": "\u00b2"}, 400, "one decimal number"),
        ({"Content_Length": "-1"}, 400, "one decimal number"),
        ({"Content_Length": "1001"}, 413, "larger than 1000 bytes"),
        ({"Content_Length": "5", "Transfer_Encoding": "chunked"}, 400, "not both"),
        ({"Transfer_Encoding": "gzip"}, 501, "only chunked"),
    ],
)
def test_a_malformed_or_too_large_declaration_is_refused_before_reading(headers, status, match) -> None:
    with pytest.raises(BodyError, match=match) as refused:
        _body(b"", **headers)
    assert refused.value.http_status == status


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"zz\r\nabc\r\n0\r\n\r\n", "not a hexadecimal size"),
        (b"3\r\nabcXX0\r\n\r\n", "does not end with CRLF"),
        (b"5\r\nab", "ended after"),
        (b"0\r\nX: 1\r\n", "trailer"),
        (b"1000\r\n" + b"a" * 10, "larger than 1000 bytes"),
    ],
)
def test_a_broken_chunked_body_is_a_body_error(raw: bytes, match: str) -> None:
    body, _ = _body(raw, Transfer_Encoding="chunked")
    with pytest.raises(BodyError, match=match):
        body.read_all()


def test_a_chunked_body_is_cut_off_at_the_limit_without_reading_on() -> None:
    raw = b"".join(b"64\r\n" + b"a" * 100 + b"\r\n" for _ in range(20)) + b"0\r\n\r\n"
    body, _ = _body(raw, limit=450, Transfer_Encoding="chunked")
    with pytest.raises(BodyError, match="larger than 450 bytes") as refused:
        body.read_all()
    assert refused.value.http_status == 413 and body.bytes_read <= 450


def test_a_framed_header_is_length_prefixed_and_bounded() -> None:
    header = b'{"shape": [1, 2, 2]}'
    body, _ = _body(struct.pack(">I", len(header)) + header + b"\0" * 4, Content_Length=str(4 + len(header) + 4))
    assert framed_header(body, limit=100) == header
    assert body.read_all() == b"\0" * 4
    body, _ = _body(struct.pack(">I", 2**31) + header, Content_Length=str(4 + len(header)))
    with pytest.raises(BodyError, match="header") as refused:
        framed_header(body, limit=100)
    assert refused.value.http_status == 413
    body, _ = _body(struct.pack(">I", 50) + header, Content_Length=str(4 + len(header)))
    with pytest.raises(BodyError, match="ended"):
        framed_header(body, limit=100)
