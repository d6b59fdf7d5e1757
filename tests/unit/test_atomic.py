"""The one atomic writer: the target is the old file or the whole new one, and a failed write leaves no trace."""

from __future__ import annotations

from pathlib import Path

import pytest

from medsam2.errors import OutputNotWritable
from medsam2.io.atomic import TEMP_GLOB, write_atomic, write_bytes_atomic, write_text_atomic


def test_a_write_replaces_the_target_and_leaves_only_it(tmp_path: Path) -> None:
    target = tmp_path / "out" / "mask.nii.gz"
    write_bytes_atomic(target, b"old")
    write_text_atomic(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.rglob("*")] == ["out", "mask.nii.gz"]


def test_the_writer_sees_a_temporary_name_with_the_targets_suffixes(tmp_path: Path) -> None:
    seen: list[Path] = []
    write_atomic(tmp_path / "seg.nii.gz", lambda tmp: (seen.append(tmp), tmp.write_bytes(b"x")))
    assert seen[0] != tmp_path / "seg.nii.gz" and seen[0].parent == tmp_path
    assert seen[0].name.endswith(".nii.gz") and not seen[0].exists()


@pytest.mark.parametrize("name", ["ddp.pt", "seg.nii.gz", "case.npz", "README"])
def test_temp_glob_finds_a_temporary_file_left_mid_write(tmp_path: Path, name: str) -> None:
    """What tests look for after a run (e.g. test_finetune_ddp.py) matches the names the writer really makes."""
    left: list[Path] = []

    def killed(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        (tmp_path / "kept").mkdir(exist_ok=True)
        left.append(tmp.rename(tmp_path / "kept" / tmp.name))  # as if the process died before its cleanup
        raise ValueError("killed")

    write_bytes_atomic(tmp_path / name, b"done")  # a finished file is no leftover
    with pytest.raises(ValueError):
        write_atomic(tmp_path / name, killed)
    assert list(tmp_path.rglob(TEMP_GLOB)) == left and len(left) == 1


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), ValueError("bad mask")])
def test_a_failed_write_leaves_no_trace_and_the_old_file_intact(tmp_path: Path, error: Exception) -> None:
    target = tmp_path / "result.npz"
    target.write_bytes(b"old")

    def half_write(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise error

    expected = OutputNotWritable if isinstance(error, OSError) else ValueError
    with pytest.raises(expected):
        write_atomic(target, half_write)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.npz"]


def test_a_failed_first_write_leaves_no_target(tmp_path: Path) -> None:
    def fail(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise OSError(5, "I/O error")

    with pytest.raises(OutputNotWritable, match="result.sr.dcm"):
        write_atomic(tmp_path / "result.sr.dcm", fail)
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_folder_is_output_not_writable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputNotWritable):
        write_bytes_atomic(blocker / "out.dcm", b"x")
    assert [p.name for p in tmp_path.iterdir()] == ["file"]
