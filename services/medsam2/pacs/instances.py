"""One WADO-RS part as a dataset, its size bounded before anything is inflated or decoded, and checked to
belong to the series that was asked for.

Deflated transfer syntaxes compress the whole dataset, header included, so a
1 MB part can inflate to gigabytes; pydicom inflates in one call, so here the
part is inflated in bounded steps first.  Encapsulated (compressed) pixel data
is decoded later, into an array sized by the instance's own header, so that
header's Rows x Columns x frames x samples x bits is counted against the
fetch's budget on arrival, before any decoding.

``SeriesCheck`` holds what every instance must agree on.  Its errors say which
attribute failed, never its value (a PatientID is patient data).
"""

from __future__ import annotations

import io
import logging
import struct
import zlib

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_dataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from medsam2.io.dicom_privacy import library_messages_redacted
from medsam2.pacs.errors import PacsBadResponse, PacsMismatch, PacsTooLarge

log = logging.getLogger(__name__)

_PREAMBLE = 132
"""128 bytes of preamble and the 'DICM' prefix of a Part 10 stream."""
_INFLATE_STEP = 1 << 20


def declared_pixel_bytes(ds: Dataset) -> int:
    """Bytes the pixel data decodes to, from the header alone: Rows x Columns x frames x samples x bits / 8."""
    try:
        rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        bits = int(ds.get("BitsAllocated", 8) or 8)
    except (TypeError, ValueError) as exc:
        raise PacsBadResponse(f"an instance's image attributes are unreadable ({type(exc).__name__})") from exc
    if min(rows, columns, frames, samples, bits) < 1:
        raise PacsBadResponse(
            "an instance's Rows, Columns, NumberOfFrames, SamplesPerPixel or BitsAllocated is not positive"
        )
    return (rows * columns * frames * samples * bits + 7) // 8  # BitsAllocated 1 packs eight pixels a byte


def read_part(body: bytes, label: str, max_bytes: int) -> Dataset:
    """Parse one ``application/dicom`` part (a Part 10 stream); a deflated one inflates to ``max_bytes`` at most."""
    if body[128:_PREAMBLE] != b"DICM":
        raise PacsBadResponse(f"{label} is not a DICOM Part 10 stream (no 'DICM' prefix)")
    meta, meta_end = _file_meta(body, label)
    syntax = UID(str(meta.get("TransferSyntaxUID", "") or ""))
    try:
        with library_messages_redacted():
            if syntax.is_deflated:
                data = _inflate(memoryview(body)[meta_end:], label, max_bytes)
                ds = read_dataset(io.BytesIO(data), is_implicit_VR=False, is_little_endian=True)
                del data
                # The dataset is held inflated: its syntax in memory is the explicit little endian it was read as.
                meta.TransferSyntaxUID = ExplicitVRLittleEndian
                ds.file_meta = meta
                ds.set_original_encoding(False, True)
            else:
                stream = io.BytesIO(body)
                ds = pydicom.dcmread(stream, force=True)
                if stream.tell() != len(body):
                    raise PacsBadResponse(f"{label} has {len(body) - stream.tell()} bytes after its last element")
    except PacsBadResponse:
        raise
    except PacsTooLarge:
        raise
    except Exception as exc:  # pydicom raises many types for malformed input
        raise PacsBadResponse(f"{label} is not readable DICOM ({type(exc).__name__})") from exc
    if "PixelData" in ds and not syntax.is_compressed:
        # pydicom reads a value cut short without a word: native pixel data must be as long as its header says.
        have, want = len(ds.PixelData), declared_pixel_bytes(ds)
        if have < want:
            raise PacsBadResponse(f"{label}: its pixel data has {have} bytes where its header says {want}")
    return ds


def _file_meta(body: bytes, label: str) -> tuple[FileMetaDataset, int]:
    """The file meta group (always explicit VR little endian, never deflated) and where it ends."""
    head = body[_PREAMBLE : _PREAMBLE + 12]
    if len(head) < 12 or head[:4] != b"\x02\x00\x00\x00" or head[4:6] != b"UL":
        raise PacsBadResponse(f"{label} has no File Meta Information Group Length")
    (length,) = struct.unpack("<I", head[8:12])
    end = _PREAMBLE + 12 + length
    if end > len(body):
        raise PacsBadResponse(f"{label}: its file meta group claims {length} bytes, more than the part holds")
    try:
        with library_messages_redacted():
            group = read_dataset(io.BytesIO(body[_PREAMBLE:end]), is_implicit_VR=False, is_little_endian=True)
    except Exception as exc:
        raise PacsBadResponse(f"{label}: its file meta group is malformed ({type(exc).__name__})") from exc
    return FileMetaDataset(group), end


def _inflate(data: memoryview, label: str, max_bytes: int) -> bytes:
    """Raw-deflate ``data`` in steps, refusing output past ``max_bytes`` before it is produced."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = bytearray()
    pending = bytes(data)
    try:
        while pending and not inflater.eof:
            room = max_bytes + 1 - len(out)
            out += inflater.decompress(pending, min(room, _INFLATE_STEP))
            pending = inflater.unconsumed_tail
            if len(out) > max_bytes:
                raise PacsTooLarge(
                    f"{label} is deflated and inflates past {max_bytes} bytes, more than its share of the fetch's "
                    "budget (a decompression bomb, or a series larger than announced)"
                )
        out += inflater.flush()
    except zlib.error as exc:
        raise PacsBadResponse(f"{label}: its deflated data is corrupt ({exc})") from exc
    if len(out) > max_bytes:
        raise PacsTooLarge(f"{label} inflates past {max_bytes} bytes, more than its share of the fetch's budget")
    return bytes(out)


class SeriesCheck:
    """What every instance of one fetched series must agree on: the study and series asked for, one patient,
    one frame of reference, one slice size, and a SOP Instance UID the QIDO-RS listing named once.
    """

    def __init__(
        self,
        where: str,
        study_uid: str,
        series_uid: str,
        listed: frozenset[str],
        size: tuple[int, int] | None = None,
    ) -> None:
        self.where = where
        self.study_uid = study_uid
        self.series_uid = series_uid
        self.listed = listed
        self.size = size
        self.seen: set[str] = set()
        self._first: Dataset | None = None

    def check(self, ds: Dataset, index: int) -> None:
        """Raise ``PacsMismatch`` (with the failed check as its reason) unless ``ds`` belongs here."""
        if str(ds.get("StudyInstanceUID", "")) != self.study_uid:
            self._fail(index, "belongs to another study than the one asked for", reason="PACS_WRONG_STUDY")
        if str(ds.get("SeriesInstanceUID", "")) != self.series_uid:
            self._fail(index, "belongs to another series than the one asked for", reason="PACS_WRONG_SERIES")
        uid = str(ds.get("SOPInstanceUID", ""))
        if uid in self.seen:
            self._fail(index, "repeats an instance already sent", reason="PACS_UNLISTED_INSTANCE")
        if self.listed and uid not in self.listed:
            self._fail(
                index, "is not one of the instances QIDO-RS listed for the series", reason="PACS_UNLISTED_INSTANCE"
            )
        self.seen.add(uid)
        size = (_int(ds, "Rows"), _int(ds, "Columns"))
        if self.size is not None and size != self.size:
            self._fail(
                index,
                f"has {size[0]}x{size[1]} pixels where the series has {self.size[0]}x{self.size[1]}",
                reason="PACS_INCONSISTENT_SERIES",
            )
        self.size = size
        first = self._first
        if first is None:
            self._first = ds
            return
        for keyword in ("PatientID", "FrameOfReferenceUID"):
            if str(ds.get(keyword, "")) != str(first.get(keyword, "")):
                self._fail(
                    index, f"has another {keyword} than the series' first one", reason="PACS_INCONSISTENT_SERIES"
                )

    def finish(self) -> None:
        """Raise unless every listed instance came."""
        if self.listed and len(self.seen) != len(self.listed):
            message = (
                f"{self.where}: the PACS sent {len(self.seen)} of the {len(self.listed)} instances "
                "QIDO-RS listed for the series"
            )
            log.warning("%s (check PACS_INCOMPLETE_SERIES)", message)
            raise PacsMismatch(message, reason="PACS_INCOMPLETE_SERIES")

    def _fail(self, index: int, what: str, *, reason: str) -> None:
        message = f"{self.where}: instance {index + 1} of the answer {what}; nothing was opened"
        log.warning("%s (check %s)", message, reason)
        raise PacsMismatch(message, reason=reason)


def _int(ds: Dataset, keyword: str) -> int:
    try:
        return int(ds.get(keyword, 0) or 0)
    except (TypeError, ValueError):
        return -1
