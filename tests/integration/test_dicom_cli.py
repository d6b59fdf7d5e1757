"""``medsam2 segment DICOM_FOLDER --out x.dcm``: a SEG and its measurements, slice K along the sorted series."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest

from medsam2.cli import exit_codes
from medsam2.cli.main import main
from medsam2.testing.synthetic_ct import write_synthetic_ct


def test_segment_a_dicom_folder_into_a_seg(tmp_path: Path, graphs: dict[str, Path], capsys) -> None:
    series = write_synthetic_ct(tmp_path / "ct", slices=16, size=128, seed=9)
    key, row, col = series.lesion_voxel()
    box = f"{col - 25},{row - 25},{col + 25},{row + 25}"
    out = tmp_path / "result" / "lesion.dcm"
    code = main(
        [
            "--threads",
            "2",
            "segment",
            str(series.folder),
            "--out",
            str(out),
            "--slice",
            str(key),
            "--box",
            box,
            "--range",
            f"{key - 1},{key + 1}",
            "--graphs",
            str(graphs["present"]),
            "--no-progress",
            "--json",
        ]
    )
    assert code == exit_codes.OK
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["slices"] == 16 and summary["measurements"] == str(out.with_name("lesion.measurements.json"))
    seg = pydicom.dcmread(out)
    referenced = [
        str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        for item in seg.PerFrameFunctionalGroupsSequence
    ]
    # Slice K is the K-th along the normal (files and instance numbers were shuffled when written).
    assert series.sop_uids[key] in referenced
    assert set(referenced) <= {series.sop_uids[k] for k in (key - 1, key, key + 1)}
    report = json.loads(out.with_name("lesion.measurements.json").read_text())
    assert report["series_uid"] == series.series_uid and report["output"] == "lesion.dcm"
    assert report["objects"][0]["voxels"] == summary["voxels"]


def test_mixed_folder_needs_series_and_fails_before_loading_a_model(tmp_path: Path, capsys) -> None:
    a = write_synthetic_ct(tmp_path / "mixed", slices=3, size=16, seed=1)
    write_synthetic_ct(tmp_path / "mixed", slices=3, size=16, seed=2)
    code = main(
        [
            "segment",
            str(tmp_path / "mixed"),
            "--out",
            str(tmp_path / "x.dcm"),
            "--slice",
            "1",
            "--box",
            "1,1,5,5",
            "--graphs",
            str(tmp_path / "no-graphs-needed"),
        ]
    )
    assert code == exit_codes.USAGE
    assert "holds 2 image series" in capsys.readouterr().err
    code = main(
        [
            "segment",
            str(tmp_path / "mixed"),
            "--series",
            a.series_uid,
            "--out",
            str(tmp_path / "x.tiff"),
            "--slice",
            "1",
            "--box",
            "1,1,5,5",
        ]
    )
    assert code == exit_codes.USAGE
    assert "the extension must be one of" in capsys.readouterr().err


def test_a_seg_of_a_nifti_is_refused_before_segmenting(tmp_path: Path, capsys) -> None:
    from nibabel.testing import data_path

    code = main(
        [
            "segment",
            str(Path(data_path) / "anatomical.nii"),
            "--out",
            str(tmp_path / "x.dcm"),
            "--slice",
            "3",
            "--box",
            "1,1,5,5",
            "--graphs",
            str(tmp_path / "unused"),
        ]
    )
    assert code == exit_codes.USAGE
    assert "a DICOM SEG needs a DICOM source, but the input is nifti" in capsys.readouterr().err
    assert not (tmp_path / "x.dcm").exists()


def test_help_mentions_dicom(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["segment", "--help"])
    text = capsys.readouterr().out
    assert "--series" in text and "DICOM folder" in text and ".measurements.json" in text
