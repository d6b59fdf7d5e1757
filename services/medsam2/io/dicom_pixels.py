"""Pixel data out of one DICOM object: decoder check, decoding, rescale, grey conversion.

Compressed transfer syntaxes are decoded by pydicom's plug-ins; this project
installs the ones with permissive licences (Pillow for JPEG and JPEG 2000,
pyjpegls for JPEG-LS; RLE and deflate are built in).  Anything else is refused
before decoding, with the transfer syntax and the missing plug-in named.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID

from medsam2.io.errors import CorruptDicom, UnsupportedTransferSyntax

_GREY = ("MONOCHROME1", "MONOCHROME2")


def transfer_syntax(ds: Dataset) -> UID | None:
    """The dataset's transfer syntax, or None when it was built in memory without file meta."""
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    return UID(uid) if uid else None


def check_decodable(ds: Dataset, label: str) -> None:
    """Raise ``UnsupportedTransferSyntax`` if no installed plug-in decodes this object's pixel data."""
    from pydicom.pixels.decoders.base import get_decoder

    try:
        uid = transfer_syntax(ds)
        if uid is None or not uid.is_compressed:
            return
    except (TypeError, ValueError) as exc:  # a corrupt file meta: not a string, or not a transfer syntax
        raise CorruptDicom(f"{label}: the file meta's Transfer Syntax UID is unusable ({exc})") from exc
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        raise UnsupportedTransferSyntax(
            f"{label}: pixel data is compressed as {uid.name} ({uid}), which pydicom has no decoder for; "
            "ask the sender (or PACS) for an uncompressed transfer syntax"
        ) from None
    if not decoder.is_available:
        raise UnsupportedTransferSyntax(
            f"{label}: pixel data is compressed as {uid.name} ({uid}) and no installed plug-in decodes it; "
            f"install one of: {'; '.join(decoder.missing_dependencies)}"
        )


def stored_frames(ds: Dataset, label: str) -> np.ndarray:
    """Decoded stored values as [frames, rows, columns] (grey) or [frames, rows, columns, 3] (colour)."""
    check_decodable(ds, label)
    try:
        pixels = ds.pixel_array
    except (ValueError, EOFError, OSError, AttributeError, TypeError, KeyError, IndexError) as exc:
        # pydicom reports missing or malformed elements of a corrupt file with any of these.
        raise CorruptDicom(f"{label}: cannot decode the pixel data ({exc}); the file is truncated or corrupt") from exc
    except RuntimeError as exc:  # pydicom's decoders report missing plug-ins and codec failures this way
        raise UnsupportedTransferSyntax(f"{label}: cannot decode the pixel data: {exc}") from exc
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if frames == 1:
        pixels = pixels[np.newaxis]
    expected = 3 if samples == 1 else 4
    if pixels.ndim != expected:
        raise CorruptDicom(f"{label}: decoded pixel data has shape {pixels.shape}, expected {expected} dimensions")
    return pixels


def is_grey(ds: Dataset) -> bool:
    """True for one-sample MONOCHROME images."""
    return int(ds.get("SamplesPerPixel", 1) or 1) == 1 and str(ds.get("PhotometricInterpretation", "")) in _GREY


def rescale(frames: np.ndarray, slopes: Sequence[float], intercepts: Sequence[float]) -> np.ndarray:
    """Apply per-frame RescaleSlope/Intercept; integers stay integers where they fit in int16."""
    slopes_a = np.asarray(slopes, np.float64)
    intercepts_a = np.asarray(intercepts, np.float64)
    if np.all(slopes_a == 1) and np.all(intercepts_a == np.round(intercepts_a)):
        # Integral modality LUTs (CT's usual slope 1, intercept -1024) are exact in integers.
        out = frames.astype(np.int32) + intercepts_a.astype(np.int32)[:, None, None]
        if out.size and out.min() >= np.iinfo(np.int16).min and out.max() <= np.iinfo(np.int16).max:
            return out.astype(np.int16)
        return out
    return (frames.astype(np.float32) * slopes_a.astype(np.float32)[:, None, None]
            + intercepts_a.astype(np.float32)[:, None, None])


def to_grey_uint8(frames: np.ndarray) -> np.ndarray:
    """RGB [.., 3] or grey frames to uint8 grey, with Pillow's ITU-R 601 luma for colour."""
    if frames.ndim == 4:
        rgb = frames
        if frames.dtype != np.uint8:
            rgb = np.round(frames.astype(np.float32) / max(float(frames.max()), 1.0) * 255.0).astype(np.uint8)
        # PIL.Image.convert("L")'s own integer ITU-R 601 arithmetic, so frames match Pillow-read files exactly.
        r, g, b = (rgb[..., i].astype(np.uint32) for i in range(3))
        return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)
    if frames.dtype == np.uint8:
        return frames
    low, high = float(frames.min()), float(frames.max())
    if low >= 0 and high <= 255:
        return frames.astype(np.uint8)
    scaled = (frames.astype(np.float32) - low) / max(high - low, 1e-6) * 255.0
    return np.round(scaled).astype(np.uint8)
