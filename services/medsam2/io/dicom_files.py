"""One DICOM file or dataset: read it, prove it is whole, and say whether it is an image.

pydicom is lenient: a file cut short at an element boundary, or overwritten
in its header, often reads as a shorter dataset without any error.  So a file
counts as whole only if the parser ended exactly at the end of the file and
the attributes every image needs are there.
"""

from __future__ import annotations

import logging
from enum import Enum
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from medsam2.io.dicom_privacy import library_messages_redacted
from medsam2.io.errors import CorruptDicom, NotAnImage, NotDicom

log = logging.getLogger(__name__)

_DEFER = 4096
"""Values larger than this (pixel data) are read only when used."""

NOT_DICOM_SUFFIXES = frozenset(
    {
        ".txt",
        ".md",
        ".json",
        ".xml",
        ".html",
        ".htm",
        ".csv",
        ".ini",
        ".cfg",
        ".db",
        ".log",
        ".pdf",
        ".jpg",
        ".jpeg",
        ".png",
        ".gif",
        ".bmp",
        ".zip",
        ".py",
        ".sh",
        ".yaml",
        ".yml",
        ".toml",
        ".nii",
        ".gz",
    }
)
"""Files a PACS export or a person commonly leaves beside DICOM files; skipped in folders."""

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
NON_IMAGE_WITH_PIXELS = frozenset(
    {
        SEGMENTATION_STORAGE,
        "1.2.840.10008.5.1.4.1.1.66.7",  # Label Map Segmentation
        "1.2.840.10008.5.1.4.1.1.481.2",  # RT Dose: a dose grid, not an image of the patient
        "1.2.840.10008.5.1.4.1.1.66.3",  # Deformable Spatial Registration
    }
)
REQUIRED_IMAGE_ATTRIBUTES = ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "Rows", "Columns")


class ObjectKind(str, Enum):
    """What a DICOM object is, as far as segmentation is concerned."""

    IMAGE = "image"
    NON_IMAGE = "non-image"
    DIRECTORY = "directory"


def read_file(path: Path) -> Dataset:
    """Read a DICOM file (pixel data deferred) or raise ``CorruptDicom`` naming it."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            preamble = handle.read(132)
            handle.seek(0)
            # Without the 'DICM' prefix only a parse that succeeds completely says it is DICOM at all.
            error = CorruptDicom if preamble[128:132] == b"DICM" else NotDicom
            with library_messages_redacted():
                ds = pydicom.dcmread(handle, defer_size=_DEFER, force=True)
            end = handle.tell()
    except OSError as exc:
        raise CorruptDicom(f"cannot read {path}: {exc.strerror or exc}") from exc
    except Exception as exc:  # pydicom raises many types for malformed input
        if error is NotDicom:
            raise NotDicom(f"{path} is not a DICOM file: no 'DICM' prefix and it does not parse ({exc})") from exc
        raise CorruptDicom(f"{path} is not a readable DICOM file: {exc}") from exc
    if end != size:
        if error is NotDicom:
            raise NotDicom(f"{path} is not a DICOM file: no 'DICM' prefix and it does not parse as DICOM")
        raise CorruptDicom(
            f"{path} is truncated or corrupt: its DICOM elements end at byte {end} but the file has {size} bytes"
        )
    if _sop_class(ds) == MEDIA_STORAGE_DIRECTORY:
        return ds
    if len(ds) == 0 or "SOPClassUID" not in ds:
        raise error(f"{path} is truncated or not DICOM: it has no SOPClassUID ({len(ds)} elements read)")
    _name_transfer_syntax(ds)
    return ds


def _name_transfer_syntax(ds: Dataset) -> None:
    """Give a file without file meta (old ACR-NEMA style, some anonymizers) the syntax it was parsed with."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID"):
        return
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit is None:
        return
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    # Without file meta the pixel data can only be native (uncompressed): encapsulation needs a named syntax.
    meta.TransferSyntaxUID = (
        ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    )
    log.debug(
        "%s has no transfer syntax in its file meta; read as %s",
        ds.get("SOPClassUID", "?"),
        meta.TransferSyntaxUID.name,
    )


def is_enhanced(ds: Dataset) -> bool:
    """True for the enhanced (functional-group) image classes: Enhanced CT/MR/PET/US, Legacy Converted, ..."""
    return "Enhanced" in sop_class_name(ds) and kind_of(ds) is ObjectKind.IMAGE


def series_of_unreadable(path: Path) -> str | None:
    """The SeriesInstanceUID a corrupt file still states, if its header gets that far; else None."""
    try:
        with library_messages_redacted():
            ds = pydicom.dcmread(path, force=True, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
    except Exception:
        return None
    uid = ds.get("SeriesInstanceUID")
    return str(uid) if uid else None


def sop_class_name(ds: Dataset) -> str:
    """The SOP class's name, e.g. 'CT Image Storage', or its UID when unknown."""
    uid = UID(str(ds.get("SOPClassUID", "")))
    return uid.name if uid.name != str(uid) else f"SOP class {uid}"


def _sop_class(ds: Dataset) -> str:
    # A DICOMDIR names its class only in the file meta.
    meta = getattr(ds, "file_meta", None)
    fallback = meta.get("MediaStorageSOPClassUID", "") if meta is not None else ""
    return str(ds.get("SOPClassUID", fallback) or fallback)


def kind_of(ds: Dataset) -> ObjectKind:
    """Image, non-image (structure set, report, SEG, ...) or a DICOMDIR."""
    sop_class = _sop_class(ds)
    if sop_class == MEDIA_STORAGE_DIRECTORY:
        return ObjectKind.DIRECTORY
    if sop_class in NON_IMAGE_WITH_PIXELS:
        return ObjectKind.NON_IMAGE
    if "PixelData" in ds:
        return ObjectKind.IMAGE
    return ObjectKind.NON_IMAGE


def check_image(ds: Dataset, label: str) -> None:
    """Raise ``NotAnImage`` or ``CorruptDicom`` unless ``ds`` is a whole image object."""
    kind = kind_of(ds)
    if kind is not ObjectKind.IMAGE:
        name = sop_class_name(ds)
        if "Image Storage" in name and "PixelData" not in ds:
            raise CorruptDicom(f"{label} is a {name} object without pixel data: the file is truncated or corrupt")
        hint = ""
        if str(ds.get("SOPClassUID", "")) == SEGMENTATION_STORAGE:
            referenced = _referenced_series(ds)
            hint = f"; it segments series {referenced}: read that series instead" if referenced else ""
        raise NotAnImage(f"{label} is a {name} object ({ds.get('Modality', 'no modality')}), not an image{hint}")
    missing = [a for a in REQUIRED_IMAGE_ATTRIBUTES if a not in ds]
    if missing:
        raise CorruptDicom(f"{label} lacks {', '.join(missing)}, which every image needs: truncated or corrupt")


def _referenced_series(ds: Dataset) -> str | None:
    for item in ds.get("ReferencedSeriesSequence", []):
        if "SeriesInstanceUID" in item:
            return str(item.SeriesInstanceUID)
    return None


def skippable(path: Path) -> bool:
    """True for hidden files and files whose suffix says they are not DICOM."""
    return path.name.startswith(".") or path.suffix.lower() in NOT_DICOM_SUFFIXES


def positive_number(value: object) -> float | None:
    """A DICOM value as a positive float, or None when it is empty, malformed, zero or negative."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None
