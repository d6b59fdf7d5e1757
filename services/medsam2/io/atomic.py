"""The one atomic file writer: write beside the target, then rename over it.

A reader of ``path`` sees the old file or the whole new one, never a partial one, and a failed write
leaves no trace: the temporary file is removed and the target is untouched.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from medsam2.errors import OutputNotWritable

# mkstemp makes 0600 files; outputs (SEG, checkpoints, Triton models) are read by other users and containers.
_MODE = 0o644
TEMP_MARK = ".partial"
"""In every temporary name: ``.<target name>.<random>.partial<target suffixes>``, hidden and beside the target."""
TEMP_GLOB = f".*{TEMP_MARK}*"
"""Matches every temporary name (``folder.rglob(TEMP_GLOB)`` finds what a process killed mid-write left)."""


def write_atomic(path: Path | str, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a temporary file in ``path``'s folder, then rename it to ``path``.

    The temporary name keeps ``path``'s suffixes (``.nii.gz``, ``.npz``), since some writers choose the format by
    it. Any failure (of ``write`` or of the rename) removes the temporary file; an ``OSError`` becomes
    ``OutputNotWritable``, anything else propagates unchanged.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.", suffix=f"{TEMP_MARK}{''.join(path.suffixes)}"
        )
        os.close(fd)
    except OSError as exc:
        raise OutputNotWritable(f"cannot write {path}: {exc.strerror or exc}") from exc
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, _MODE)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError):
            raise OutputNotWritable(f"cannot write {path}: {exc.strerror or exc}") from exc
        raise
    return path


def write_bytes_atomic(path: Path | str, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return write_atomic(path, lambda tmp: tmp.write_bytes(data))


def write_text_atomic(path: Path | str, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
