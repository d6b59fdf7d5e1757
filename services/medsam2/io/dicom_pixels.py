"""Pixel data out of one DICOM object, as a viewer shows it: decoding, palette, modality LUT, MONOCHROME1.

Compressed transfer syntaxes are decoded by pydicom's plug-ins.  The base
install has Pillow (8-bit JPEG, JPEG 2000) and pyjpegls (JPEG-LS); RLE and
deflate are built in.  The ``codecs`` extra (``pip install 'medsam2-serving[codecs]'``)
adds pylibjpeg with its libjpeg, openjpeg and RLE plug-ins, which decode
12-bit JPEG (lossy extended, lossless) and the JPEG 2000 files Pillow cannot.
A syntax that nothing installed decodes is refused before decoding, naming
the transfer syntax and that extra.

Values then become what a viewer shows: PALETTE COLOR indices are mapped
through their palette, the Modality LUT (a LUT sequence or rescale slope and
intercept) is applied, and MONOCHROME1 (where the highest value is black) is
inverted so that bone is bright as in MONOCHROME2.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID

from medsam2.io.dicom_privacy import library_messages_redacted
from medsam2.io.errors import CorruptDicom, UnsupportedTransferSyntax

_GREY = ("MONOCHROME1", "MONOCHROME2")
CODECS_EXTRA_HINT = "install the codecs extra: pip install 'medsam2-serving[codecs]'"
"""How every decoding refusal says what to install."""


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
            f"{label}: pixel data is compressed as {uid.name} ({uid}), which pydicom has no decoder for, not even "
            "with the codecs extra; ask the sender (or PACS) for an uncompressed transfer syntax"
        ) from None
    if not decoder.is_available:
        raise UnsupportedTransferSyntax(
            f"{label}: pixel data is compressed as {uid.name} ({uid}) and no installed plug-in decodes it; "
            f"{_install_hint(decoder)}"
        )


def _codecs_extra_missing(decoder: object) -> bool:
    """True when pylibjpeg (the codecs extra) is one of the plug-ins this decoder lacks."""
    return any("pylibjpeg" in missing for missing in getattr(decoder, "missing_dependencies", []))


def _install_hint(decoder: object) -> str:
    if _codecs_extra_missing(decoder):
        return CODECS_EXTRA_HINT
    return "the codecs extra does not decode it either: ask the sender (or PACS) for an uncompressed transfer syntax"


def stored_frames(ds: Dataset, label: str) -> np.ndarray:
    """Decoded stored values as [frames, rows, columns] (grey) or [frames, rows, columns, 3] (colour)."""
    from pydicom.pixels import pixel_array

    check_decodable(ds, label)
    try:
        with library_messages_redacted([ds]):
            # What ``ds.pixel_array`` computes, without keeping a copy on the dataset beside its pixel data.
            pixels = pixel_array(ds)
    except (ValueError, EOFError, OSError, AttributeError, TypeError, KeyError, IndexError) as exc:
        # pydicom reports missing or malformed elements of a corrupt file with any of these.
        raise CorruptDicom(f"{label}: cannot decode the pixel data ({exc}); the file is truncated or corrupt") from exc
    except RuntimeError as exc:  # pydicom's decoders report missing plug-ins and codec failures this way
        from pydicom.pixels.decoders.base import get_decoder

        uid = transfer_syntax(ds)
        syntax = f"{uid.name} ({uid})" if uid is not None else "an unknown transfer syntax"
        decoder = get_decoder(uid) if uid is not None and uid.is_compressed else None
        if decoder is not None and _codecs_extra_missing(decoder):
            raise UnsupportedTransferSyntax(
                f"{label}: no installed plug-in decodes this {syntax} pixel data ({_first_line(exc)}); "
                f"{CODECS_EXTRA_HINT}"
            ) from exc
        raise CorruptDicom(
            f"{label}: every installed decoder failed on this {syntax} pixel data ({_first_line(exc)}); the "
            "compressed data is damaged or uses a feature no plug-in supports"
        ) from exc
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if frames == 1:
        pixels = pixels[np.newaxis]
    expected = 3 if samples == 1 else 4
    if pixels.ndim != expected:
        raise CorruptDicom(f"{label}: decoded pixel data has shape {pixels.shape}, expected {expected} dimensions")
    return pixels


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def displayed_frames(ds: Dataset, label: str) -> np.ndarray:
    """Decoded frames with PALETTE COLOR indices mapped to RGB through the object's palette."""
    frames = stored_frames(ds, label)
    if str(ds.get("PhotometricInterpretation", "")) != "PALETTE COLOR":
        return frames
    from pydicom.pixels import apply_color_lut

    try:
        with library_messages_redacted([ds]):
            return apply_color_lut(frames, ds)
    except (ValueError, KeyError, AttributeError, IndexError) as exc:
        raise CorruptDicom(f"{label}: a PALETTE COLOR image whose palette cannot be applied ({exc})") from exc


def modality_values(
    frames: np.ndarray,
    ds: Dataset,
    slopes: Sequence[float],
    intercepts: Sequence[float],
    label: str,
    *,
    invert_monochrome1: bool = True,
) -> np.ndarray:
    """Grey stored values [frames, rows, columns] to modality values (Modality LUT), MONOCHROME1 inverted."""
    if "ModalityLUTSequence" in ds:
        from pydicom.pixels import apply_modality_lut

        try:
            with library_messages_redacted([ds]):
                values = np.asarray(apply_modality_lut(frames, ds))
        except (ValueError, KeyError, AttributeError, IndexError) as exc:
            raise CorruptDicom(f"{label}: its Modality LUT Sequence cannot be applied ({exc})") from exc
    else:
        values = rescale(frames, slopes, intercepts)
    return invert(values) if invert_monochrome1 and is_monochrome1(ds) else values


def is_monochrome1(ds: Dataset) -> bool:
    """True when the lowest value is shown white (CR, DX, some MG)."""
    return str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1"


def invert(values: np.ndarray) -> np.ndarray:
    """Flip values within their own range (highest <-> lowest): MONOCHROME1 shown as MONOCHROME2 would."""
    if values.size == 0:
        return values
    low, high = values.min(), values.max()
    if np.issubdtype(values.dtype, np.integer):
        flipped = int(low) + int(high) - values.astype(np.int64)
        return flipped.astype(values.dtype)  # the same range, so the same type holds it
    return (low + high) - values


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
    return (
        frames.astype(np.float32) * slopes_a.astype(np.float32)[:, None, None]
        + intercepts_a.astype(np.float32)[:, None, None]
    )


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
