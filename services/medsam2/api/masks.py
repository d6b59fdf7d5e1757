"""Binary masks on the wire: bit-packed or run-length encoded, never dense."""

from __future__ import annotations

import numpy as np

from medsam2.errors import InvalidInput


def pack_bits(mask: np.ndarray) -> bytes:
    """Row-major bits, most significant first, padded to a byte."""
    return np.packbits(np.asarray(mask, bool).ravel()).tobytes()


def unpack_bits(data: bytes, rows: int, columns: int) -> np.ndarray:
    """Inverse of ``pack_bits``; raises ``InvalidInput`` if the byte count does not fit the shape."""
    expected = (rows * columns + 7) // 8
    if len(data) != expected:
        raise InvalidInput(f"bit-packed mask of {rows}x{columns} needs {expected} bytes, got {len(data)}")
    bits = np.unpackbits(np.frombuffer(data, np.uint8), count=rows * columns)
    return bits.reshape(rows, columns).astype(bool)


def encode_rle(mask: np.ndarray) -> bytes:
    """Row-major run lengths (uint32 little-endian), starting with a run of zeros."""
    flat = np.asarray(mask, bool).ravel()
    changes = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(bounds)
    if flat.size and flat[0]:
        runs = np.concatenate([[0], runs])
    return runs.astype("<u4").tobytes()


def decode_rle(data: bytes, rows: int, columns: int) -> np.ndarray:
    """Inverse of ``encode_rle``; raises ``InvalidInput`` if the runs do not cover the slice."""
    if len(data) % 4:
        raise InvalidInput(f"RLE mask has {len(data)} bytes, not a whole number of uint32 runs")
    runs = np.frombuffer(data, "<u4").astype(np.int64)
    if runs.sum() != rows * columns:
        raise InvalidInput(f"RLE runs cover {int(runs.sum())} pixels, the slice has {rows * columns}")
    values = np.arange(runs.size) % 2 == 1
    return np.repeat(values, runs).reshape(rows, columns)
