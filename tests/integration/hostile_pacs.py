"""A DICOMweb server on loopback that misbehaves on purpose, one way per study UID.

QIDO-RS (``/studies/S/series``, ``/studies/S/series/SE/instances``) and
WADO-RS (``/studies/S/series/SE``, and its headers alone at ``/studies/S/series/SE/metadata``) answer for every
study registered with ``add``; what the study's ``mode`` says decides how:

- ``honest``: what a good PACS sends;
- ``endless``: a multipart body that never closes (one part header, then bytes without end);
- ``deflate_bomb``: one Deflated Explicit VR Little Endian instance of about 1 MB that inflates to 1 GiB;
- ``size_lie``: QIDO-RS announces 1 instance of 8x8, WADO-RS sends 200 of 512x512;
- ``endless_paging``: every QIDO-RS page of instances is full, with new UIDs, for ever;
- ``wrong_study``: the instances (same series UID) belong to another study and patient;
- ``mixed_size``: one instance has other Rows/Columns than the rest;
- ``trickle``: the WADO-RS body arrives at 1 byte/s;
- ``wrong_content_type``: WADO-RS answers 200 with an HTML page;
- ``broken_off``: WADO-RS announces its length, sends half, and closes the connection.
- ``many_instances`` (made by ``many_instances_study``): every search is valid and pages as asked, but the series
  lists more instances than a service opens (no instance is ever retrieved).

Every STOW-RS (any POST) is refused with 400, after its body is read: a PACS that will not store.

Every request path is recorded in ``requests``.  ``stop`` closes the server and wakes every stalled handler.
"""

from __future__ import annotations

import io
import json
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pydicom
from pydicom.dataset import Dataset
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid

BOUNDARY = "hostile-boundary-7f3a"
BOMB_BYTES = 1 << 30
"""What the deflate bomb's dataset inflates to."""


@dataclass
class HostileStudy:
    """One study the server holds, and how it misbehaves."""

    mode: str
    study_uid: str
    series_uid: str
    parts: list[bytes]
    """Part 10 streams of the instances, as an honest PACS would send them."""
    sop_uids: list[str]
    rows: int
    columns: int
    voxel_bytes: int
    """Bytes of the study's voxels as the service holds them (int16 CT)."""
    extra: dict = field(default_factory=dict)


def part10(ds: Dataset, syntax: str = ExplicitVRLittleEndian) -> bytes:
    """``ds`` as a Part 10 stream (preamble, file meta, dataset) in explicit VR little endian."""
    ds.file_meta.TransferSyntaxUID = syntax
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def study_from_folder(folder: Path, mode: str) -> HostileStudy:
    """A study made of the DICOM files in ``folder`` (one series), to be served as ``mode``."""
    datasets = [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]
    datasets.sort(key=lambda ds: int(ds.InstanceNumber))
    first = datasets[0]
    rows, columns = int(first.Rows), int(first.Columns)
    study = HostileStudy(
        mode,
        str(first.StudyInstanceUID),
        str(first.SeriesInstanceUID),
        [part10(ds) for ds in datasets],
        [str(ds.SOPInstanceUID) for ds in datasets],
        rows,
        columns,
        len(datasets) * rows * columns * 2,
    )
    if mode == "wrong_study":
        other_study, other_patient = generate_uid(), "OTHER-PATIENT-4711"
        study.extra["patient_id"] = other_patient
        for ds in datasets:
            ds.StudyInstanceUID = other_study
            ds.PatientID = other_patient
        study.parts = [part10(ds) for ds in datasets]
    elif mode == "mixed_size":
        odd = datasets[1]
        odd.Columns = columns + 8
        odd.PixelData = bytes(rows * (columns + 8) * 2)
        study.parts[1] = part10(odd)
    elif mode == "deflate_bomb":
        study.parts = [deflate_bomb(datasets[0])]
        study.sop_uids = study.sop_uids[:1]
    elif mode == "size_lie":
        template = datasets[0]
        template.Rows = template.Columns = 512
        template.PixelData = bytes(512 * 512 * 2)
        study.extra["template"] = template
    return study


def many_instances_study(count: int) -> HostileStudy:
    """A series of ``count`` 16x16 instances that the PACS lists honestly, page by page, and never sends."""
    root = "1.2.826.0.1.3680043.10.9998"
    uids = [f"{root}.3.{k + 1}" for k in range(count)]
    return HostileStudy("many_instances", f"{root}.1", f"{root}.2", [], uids, 16, 16, count * 16 * 16 * 2)


def deflate_bomb(ds: Dataset) -> bytes:
    """``ds`` as a Deflated Explicit VR Little Endian stream whose pixel data inflates to ``BOMB_BYTES`` zeros."""
    header = Dataset()
    for element in ds:
        if element.tag != 0x7FE00010:
            header.add(element)
    header.Rows = header.Columns = 16384
    header.NumberOfFrames = 2  # 16384 x 16384 x 2 frames x 2 bytes: the header itself says 1 GiB
    plain = pydicom.filebase.DicomBytesIO()
    plain.is_little_endian, plain.is_implicit_VR = True, False
    write_dataset(plain, header)
    squeeze = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = bytearray(squeeze.compress(plain.getvalue()))
    body += squeeze.compress(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, BOMB_BYTES))
    # After a full flush deflate starts afresh, so the compressed form of one block of zeros can be repeated.
    zeros = bytes(16 << 20)
    body += squeeze.compress(zeros) + squeeze.flush(zlib.Z_FULL_FLUSH)
    block = squeeze.compress(zeros) + squeeze.flush(zlib.Z_FULL_FLUSH)
    body += block * (BOMB_BYTES // len(zeros) - 1)
    body += squeeze.flush()
    meta = pydicom.filebase.DicomBytesIO()
    meta.is_little_endian, meta.is_implicit_VR = True, False
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    return b"\0" * 128 + b"DICM" + meta.getvalue() + bytes(body)


def _metadata(part: bytes) -> dict:
    """An instance's DICOM JSON model without its pixels, as WADO-RS metadata answers."""
    ds = pydicom.dcmread(io.BytesIO(part))
    del ds.PixelData
    return ds.to_json_dict()


def _item(attributes: dict[str, tuple[str, object]]) -> dict:
    return {tag: {"vr": vr, "Value": [value]} for tag, (vr, value) in attributes.items()}


class HostilePacs:
    """The server; ``url`` is its DICOMweb base URL."""

    def __init__(self) -> None:
        self.studies: dict[str, HostileStudy] = {}
        self.requests: list[str] = []
        self.stopping = threading.Event()
        pacs = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                pacs.requests.append(self.path)
                try:
                    pacs.answer(self)
                except (TimeoutError, BrokenPipeError, ConnectionResetError):
                    pass  # the service stopped reading: what a hostile PACS wants to see

            def do_POST(self) -> None:
                pacs.requests.append(f"POST {self.path}")
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(400, "Storage refused")
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/dicom-web"

    def add(self, study: HostileStudy) -> HostileStudy:
        """Serve ``study`` from now on."""
        self.studies[study.study_uid] = study
        return study

    def stop(self) -> None:
        """Close the listening socket and end every handler still writing."""
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> HostilePacs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- answers -------------------------------------------------------------------------
    def answer(self, handler: BaseHTTPRequestHandler) -> None:
        """Route one GET."""
        url = urlsplit(handler.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        parts = url.path.removeprefix("/dicom-web/").split("/")
        study = self.studies.get(parts[1]) if len(parts) > 1 and parts[0] == "studies" else None
        if study is None:
            self._json(handler, [])
            return
        if parts[2:] == ["series"]:
            wanted = query.get("SeriesInstanceUID")
            if wanted and wanted != study.series_uid or int(query.get("offset", 0)):
                self._json(handler, [])
                return
            count = 1 if study.mode == "size_lie" else len(study.sop_uids)
            self._json(
                handler,
                [
                    _item(
                        {
                            "0020000D": ("UI", study.study_uid),
                            "0020000E": ("UI", study.series_uid),
                            "00080060": ("CS", "CT"),
                            "00201209": ("IS", count),
                        }
                    )
                ],
            )
        elif parts[2:] == ["series", study.series_uid, "instances"]:
            self._instances(handler, study, int(query.get("limit", 100)), int(query.get("offset", 0)))
        elif parts[2:] == ["series", study.series_uid]:
            self._retrieve(handler, study)
        elif parts[2:] == ["series", study.series_uid, "metadata"]:
            self._json(handler, [_metadata(part) for part in study.parts])
        else:
            handler.send_error(404)

    def _instances(self, handler: BaseHTTPRequestHandler, study: HostileStudy, limit: int, offset: int) -> None:
        if study.mode == "endless_paging":
            uids = [f"1.2.826.0.1.3680043.10.9999.{offset + i + 1}" for i in range(limit)]
        elif study.mode == "size_lie":
            uids = study.sop_uids[:1] if offset == 0 else []
        else:
            uids = study.sop_uids[offset : offset + limit]
        size = 8 if study.mode == "size_lie" else None
        items = [
            _item(
                {
                    "0020000D": ("UI", study.study_uid),
                    "0020000E": ("UI", study.series_uid),
                    "00080018": ("UI", uid),
                    "00280010": ("US", size or study.rows),
                    "00280011": ("US", size or study.columns),
                }
            )
            for uid in uids
        ]
        self._json(handler, items)

    def _json(self, handler: BaseHTTPRequestHandler, items: list) -> None:
        body = json.dumps(items).encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/dicom+json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def _multipart(self, parts: Iterator[bytes]) -> Iterator[bytes]:
        for part in parts:
            yield f"\r\n--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part
        yield f"\r\n--{BOUNDARY}--\r\n".encode()

    def _retrieve(self, handler: BaseHTTPRequestHandler, study: HostileStudy) -> None:
        mode = study.mode
        if mode == "wrong_content_type":
            page = b"<html><body>Welcome to the PACS web portal. Please log in.</body></html>"
            handler.send_response(200)
            handler.send_header("Content-Type", "text/html; charset=utf-8")
            handler.send_header("Content-Length", str(len(page)))
            handler.end_headers()
            handler.wfile.write(page)
            return
        handler.send_response(200)
        handler.send_header("Content-Type", f'multipart/related; type="application/dicom"; boundary={BOUNDARY}')
        if mode in ("honest", "wrong_study", "mixed_size", "deflate_bomb", "broken_off"):
            body = b"".join(self._multipart(iter(study.parts)))
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            if mode == "broken_off":
                handler.wfile.write(body[: len(body) // 2])
                handler.wfile.flush()
                handler.connection.shutdown(socket.SHUT_RDWR)
                handler.close_connection = True
                return
            handler.wfile.write(body)
            return
        # The rest stream without a length, and close the connection at the end.
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.close_connection = True
        out = handler.wfile
        if mode == "endless":
            out.write(f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode())
            chunk = bytes(1 << 16)
            while not self.stopping.is_set():
                out.write(chunk)
        elif mode == "size_lie":
            template = study.extra["template"]

            def instances() -> Iterator[bytes]:
                for k in range(200):
                    template.SOPInstanceUID = study.sop_uids[0] if k == 0 else generate_uid()
                    yield part10(template)

            for piece in self._multipart(instances()):
                if self.stopping.is_set():
                    return
                out.write(piece)
        elif mode == "trickle":
            for byte in b"".join(self._multipart(iter(study.parts))):
                if self.stopping.wait(1.0):
                    return
                out.write(bytes([byte]))
                out.flush()
        else:
            raise AssertionError(f"unknown mode {mode}")


def wait_until(predicate, timeout_s: float, what: str) -> None:
    """Poll ``predicate`` until true (or fail naming ``what``)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout_s:g} s")
        time.sleep(0.05)
