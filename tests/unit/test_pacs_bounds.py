"""The pure parts of a bounded PACS fetch: multipart splitting, UID checks, bounded inflation, series checks,
per-endpoint settings and the fetch slots (the hostile server itself is in tests/integration/test_hostile_pacs.py).
"""

from __future__ import annotations

import struct
import zlib

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import CTImageStorage, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from medsam2.errors import CapacityExceeded, ConfigError
from medsam2.pacs.config import load_config
from medsam2.pacs.errors import InvalidUid, PacsBadResponse, PacsMismatch, PacsTooLarge, PacsTransferBroken
from medsam2.pacs.instances import SeriesCheck, declared_pixel_bytes, read_part
from medsam2.pacs.multipart import boundary_of, parts
from medsam2.pacs.transfer import check_uid
from medsam2.server import auth
from medsam2.server.pacs_fetches import PacsFetchGuard, PacsFetchLimits

BODY = (
    b"preamble\r\n--b1\r\nContent-Type: application/dicom\r\n\r\nfirst\r\n--b1 \r\n"
    b"Content-Type: application/dicom; x=1\r\n\r\nsecond\r\nwith lines\r\n--b1--\r\nepilogue"
)


def _split(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_parts_are_found_however_the_body_is_cut(size: int) -> None:
    found = list(parts(_split(BODY, size), "b1", "here"))
    assert [(p.content_type, p.body) for p in found] == [
        ("application/dicom", b"first"),
        ("application/dicom", b"second\r\nwith lines"),
    ]


def test_a_body_without_its_closing_delimiter_is_broken_not_shorter() -> None:
    cut = BODY[: BODY.index(b"--b1--")]
    with pytest.raises(PacsTransferBroken, match="ended in the middle of a part"):
        list(parts(_split(cut, 5), "b1", "here"))
    with pytest.raises(PacsTransferBroken, match="before its first part"):
        list(parts([b"nothing here"], "b1", "here"))


def test_endless_part_headers_are_refused() -> None:
    endless = [b"--b1\r\n"] + [b"X-Filler: " + b"a" * 1000 + b"\r\n"] * 40
    with pytest.raises(PacsBadResponse, match="headers are longer than"):
        list(parts(endless, "b1", "here"))


def test_the_content_type_must_be_multipart_related_with_a_boundary() -> None:
    assert boundary_of('multipart/related; type="application/dicom"; boundary="a b"', "w") == "a b"
    with pytest.raises(PacsBadResponse, match="content type 'text/html', not multipart/related"):
        boundary_of("text/html; charset=utf-8", "w")
    with pytest.raises(PacsBadResponse, match="without a usable boundary"):
        boundary_of("multipart/related", "w")


@pytest.mark.parametrize("uid", ["1.2.3/../x", "1.2.3?limit=1", "1..2", "", ".1", "1" * 65, "1.2.3 "])
def test_what_is_not_a_dicom_uid_is_refused(uid: str) -> None:
    with pytest.raises(InvalidUid, match="is not a DICOM UID"):
        check_uid(uid, "study UID")


def test_a_dicom_uid_passes() -> None:
    assert check_uid("1.2.840.10008.5.1.4.1.1.2", "study UID") == "1.2.840.10008.5.1.4.1.1.2"


def _image(**attributes: object) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = "1.2.1", "1.2.2", "1.2.3"
    ds.PatientID = "P1"
    ds.FrameOfReferenceUID = "1.2.4"
    ds.Rows = ds.Columns = 4
    ds.BitsAllocated, ds.SamplesPerPixel = 16, 1
    for key, value in attributes.items():
        setattr(ds, key, value)
    return ds


def _part10(ds: Dataset, *, deflated_pixels: int = 0) -> bytes:
    """A Part 10 stream of ``ds``; with ``deflated_pixels``, deflated with that many zero bytes of pixel data."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian if deflated_pixels else ExplicitVRLittleEndian
    head = DicomBytesIO()
    head.is_little_endian, head.is_implicit_VR = True, False
    write_file_meta_info(head, meta, enforce_standard=True)
    data = DicomBytesIO()
    data.is_little_endian, data.is_implicit_VR = True, False
    write_dataset(data, ds)
    body = data.getvalue()
    if deflated_pixels:
        squeeze = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        pixel = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, deflated_pixels)
        body = squeeze.compress(body + pixel + bytes(deflated_pixels)) + squeeze.flush()
    return b"\0" * 128 + b"DICM" + head.getvalue() + body


def test_a_part_is_parsed_and_its_pixels_sized_from_its_own_header() -> None:
    ds = read_part(_part10(_image(PixelData=bytes(32))), "instance 1", 1 << 20)
    assert ds.SOPInstanceUID == "1.2.3" and declared_pixel_bytes(ds) == 4 * 4 * 2
    assert declared_pixel_bytes(_image(Rows=16384, Columns=16384, NumberOfFrames=2)) == 2**30


def test_a_deflated_part_inflates_within_its_bound_and_no_further() -> None:
    small = read_part(_part10(_image(), deflated_pixels=32), "instance 1", 1 << 20)
    assert small.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian and len(small.PixelData) == 32
    bomb = _part10(_image(), deflated_pixels=64 << 20)  # 64 MiB of zeros in about 64 KB
    assert len(bomb) < 100_000
    with pytest.raises(PacsTooLarge, match="inflates past 1048576 bytes"):
        read_part(bomb, "instance 1", 1 << 20)


def test_a_part_that_is_not_dicom_is_a_bad_response() -> None:
    with pytest.raises(PacsBadResponse, match="no 'DICM' prefix"):
        read_part(b"<html>login</html>", "instance 1", 1 << 20)
    whole = _part10(_image(PixelData=bytes(32)))
    with pytest.raises(PacsBadResponse, match="pixel data has 25 bytes where its header says 32"):
        read_part(whole[:-7], "instance 1", 1 << 20)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"StudyInstanceUID": "9.9"}, "PACS_WRONG_STUDY"),
        ({"SeriesInstanceUID": "9.9"}, "PACS_WRONG_SERIES"),
        ({"SOPInstanceUID": "9.9"}, "PACS_UNLISTED_INSTANCE"),
        ({"SOPInstanceUID": "1.2.3"}, "PACS_UNLISTED_INSTANCE"),  # sent twice
        ({"Columns": 5}, "PACS_INCONSISTENT_SERIES"),
        ({"PatientID": "SECRET-PATIENT"}, "PACS_INCONSISTENT_SERIES"),
        ({"FrameOfReferenceUID": "9.9"}, "PACS_INCONSISTENT_SERIES"),
    ],
)
def test_every_instance_must_belong_to_the_series_asked_for(change: dict, reason: str) -> None:
    check = SeriesCheck("series 1.2.2 on PACS p", "1.2.1", "1.2.2", frozenset({"1.2.3", "1.2.5"}), (4, 4))
    check.check(_image(), 0)
    with pytest.raises(PacsMismatch) as info:
        check.check(_image(**{"SOPInstanceUID": "1.2.5", **change}), 1)
    assert info.value.reason == reason and "instance 2 of the answer" in str(info.value)
    assert "SECRET-PATIENT" not in str(info.value)


def test_a_series_missing_listed_instances_is_incomplete() -> None:
    check = SeriesCheck("here", "1.2.1", "1.2.2", frozenset({"1.2.3", "1.2.5"}))
    check.check(_image(), 0)
    with pytest.raises(PacsMismatch, match="sent 1 of the 2 instances") as info:
        check.finish()
    assert info.value.reason == "PACS_INCOMPLETE_SERIES"


def test_endpoint_bounds_come_from_the_file_and_the_environment(tmp_path) -> None:
    path = tmp_path / "pacs.toml"
    path.write_text('[endpoints.h]\nurl = "http://h"\nfetch_deadline_s = 12\nqido_page_size = 50\n')
    endpoint = load_config(path, {"MEDSAM2_PACS_H_MAX_QIDO_PAGES": "3"}).get("h")
    assert (endpoint.fetch_deadline_s, endpoint.qido_page_size, endpoint.max_qido_pages, endpoint.timeout_s) == (
        12.0,
        50,
        3,
        30.0,
    )
    defaults = load_config(None, {"MEDSAM2_PACS_D_URL": "http://d"}).get("d")
    assert (defaults.fetch_deadline_s, defaults.qido_page_size, defaults.max_qido_pages) == (300.0, 500, 20)
    with pytest.raises(ConfigError, match="max_qido_pages must be at least 1"):
        load_config(None, {"MEDSAM2_PACS_D_URL": "http://d", "MEDSAM2_PACS_D_MAX_QIDO_PAGES": "0"})
    with pytest.raises(ConfigError, match="qido_page_size must be a whole number"):
        load_config(None, {"MEDSAM2_PACS_D_URL": "http://d", "MEDSAM2_PACS_D_QIDO_PAGE_SIZE": "many"})
    with pytest.raises(ConfigError, match="fetch_deadline_s must be positive"):
        load_config(None, {"MEDSAM2_PACS_D_URL": "http://d", "MEDSAM2_PACS_D_FETCH_DEADLINE_S": "0"})


class _Context:
    def __init__(self) -> None:
        self.callbacks: list = []
        self.active = True

    def is_active(self) -> bool:
        return self.active

    def add_callback(self, callback) -> bool:
        self.callbacks.append(callback)
        return True


def test_fetch_slots_are_capped_per_principal_and_in_total_and_a_leaving_client_cancels() -> None:
    guard = PacsFetchGuard(PacsFetchLimits(max_concurrent=2, max_per_principal=1))
    context = _Context()
    with guard.fetch(context) as cancel:
        assert guard.running == 1 and not cancel.reason
        with pytest.raises(CapacityExceeded, match="the limit per principal") as info:
            with guard.fetch(_Context()):
                pass
        assert info.value.reason == "PACS_FETCHES_FULL" and info.value.retry_after_s
        for callback in context.callbacks:  # the call ends: what the fetch does is stopped
            callback()
        assert cancel.reason == "the client left"
    assert guard.running == 0
    first = auth.bind("alice", "CreateSession")
    with guard.fetch(None):
        auth.bind("bob", "CreateSession")
        with guard.fetch(None):
            carol = auth.bind("carol", "CreateSession")
            with pytest.raises(CapacityExceeded, match="2 PACS fetches are already in flight"):
                with guard.fetch(None):
                    pass
            auth.unbind(carol)
    auth.unbind(first)
    assert guard.running == 0
