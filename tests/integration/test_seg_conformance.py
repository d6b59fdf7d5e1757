"""SEGs that dicom3tools' dciodvfy accepts, from series an anonymizer has been at; identifiers out of logs.

The corpus test covers real MR, enhanced CT and a MONOCHROME1 CR (RG3_UNCR); here a 60-slice CT series is
made with pydicom without the Type 2 attributes anonymizers drop and with an empty SliceThickness.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_conformance import dciodvfy_errors
from medsam2.cli import exit_codes
from medsam2.cli.main import main
from medsam2.testing.synthetic_ct import write_synthetic_ct

DROPPED = (
    "PatientBirthDate",
    "PatientSex",
    "StudyTime",
    "ReferringPhysicianName",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
)


@pytest.fixture(scope="module")
def anonymized_ct(tmp_path_factory: pytest.TempPathFactory):
    """60 slices, every dropped attribute absent, SliceThickness present but empty, a name highdicom warns on."""
    series = write_synthetic_ct(tmp_path_factory.mktemp("anon") / "ct", slices=60, size=64, seed=4)
    for path in series.paths:
        ds = pydicom.dcmread(path)
        for keyword in DROPPED:
            if keyword in ds:
                delattr(ds, keyword)
        ds.SliceThickness = None
        ds.PatientName = "Rosalind Sample-Secret"  # no '^': highdicom warns and quotes it
        ds.PatientID = "PID-SECRET-77"
        ds.save_as(path, enforce_file_format=True)
    return series


def _segment(series, out: Path, graphs: dict[str, Path], *extra: str) -> int:
    key = 30
    return main(
        [
            "--threads",
            "2",
            *extra,
            "segment",
            str(series.folder),
            "--out",
            str(out),
            "--slice",
            str(key),
            "--box",
            "16,16,48,48",
            "--range",
            f"{key - 1},{key + 1}",
            "--graphs",
            str(graphs["present"]),
            "--no-progress",
            "--json",
        ]
    )


def test_a_60_slice_ct_without_type2_attributes_gives_a_valid_seg(
    anonymized_ct, graphs: dict[str, Path], tmp_path: Path, capsys
) -> None:
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (Debian's dicom3tools) is not installed: run scripts/test_deps.sh")
    first = pydicom.dcmread(anonymized_ct.paths[0])
    assert "PatientBirthDate" not in first and first.SliceThickness in (None, "")
    out = tmp_path / "seg.dcm"
    assert _segment(anonymized_ct, out, graphs) == exit_codes.OK
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["slices"] == 60
    seg = pydicom.dcmread(out)
    for keyword in (
        "PatientBirthDate",
        "PatientSex",
        "StudyTime",
        "ReferringPhysicianName",
        "AccessionNumber",
        "StudyID",
    ):
        assert keyword in seg and seg[keyword].value in (None, ""), keyword  # Type 2: present, empty
    thickness = float(seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].SliceThickness)
    assert thickness == pytest.approx(anonymized_ct.geometry.slice_spacing, rel=1e-4)  # from the geometry
    assert dciodvfy_errors(out) == []


class _RootRecords(logging.Handler):
    """What the application's own handlers (all on the root logger) receive."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_no_identifiers_on_stderr_or_in_logs_and_uids_only_at_debug(
    anonymized_ct, graphs: dict[str, Path], tmp_path: Path, capsys
) -> None:
    # pytest hangs its own capture handlers on every logger; the root logger is where the CLI's handler lives.
    root = logging.getLogger()
    handler, level = _RootRecords(), root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        code = _segment(anonymized_ct, tmp_path / "seg.dcm", graphs, "--log-level", "DEBUG")
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    assert code == exit_codes.OK
    err = capsys.readouterr().err
    messages = [r.getMessage() for r in handler.records]
    text = err + "\n".join(messages)
    for secret in ("Rosalind", "Sample-Secret", "PID-SECRET-77"):
        assert secret not in text
    # highdicom did complain about the name: its words reached DEBUG, redacted.
    assert any(
        "intended person name" in r.getMessage() and "<redacted>" in r.getMessage()
        for r in handler.records
        if r.levelno == logging.DEBUG
    )
    assert "Warning" not in err and "highdicom" not in err
    uids = {anonymized_ct.series_uid, anonymized_ct.study_uid, *anonymized_ct.sop_uids}
    above_debug = [r.getMessage() for r in handler.records if r.levelno > logging.DEBUG]
    assert not [m for m in above_debug if any(uid in m for uid in uids)]
    assert not [line for line in err.splitlines() if any(uid in line for uid in uids)]


def test_a_seg_that_cannot_be_written_is_refused_before_inference(anonymized_ct, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "no-for"
    shutil.copytree(anonymized_ct.folder, folder)
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        del ds.FrameOfReferenceUID
        ds.save_as(path, enforce_file_format=True)
    code = main(
        [
            "segment",
            str(folder),
            "--out",
            str(tmp_path / "x.dcm"),
            "--slice",
            "3",
            "--box",
            "1,1,9,9",
            "--graphs",
            str(tmp_path / "no-graphs: the refusal comes before any model is loaded"),
        ]
    )
    assert code == exit_codes.USAGE
    err = capsys.readouterr().err
    assert str(folder) in err and "FrameOfReferenceUID" in err and ".nii.gz" in err
    assert not (tmp_path / "x.dcm").exists()
    assert np.all([p.suffix == ".dcm" for p in folder.iterdir()])
