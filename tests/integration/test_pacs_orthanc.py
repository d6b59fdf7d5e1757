"""Round trips through a real Orthanc over DICOMweb: STOW a series, QIDO/WADO it back, segment it with the
real engine, STOW the SEG, read the SEG back from Orthanc; and nothing invalid or partial is ever stored.

Each scenario below runs in its own private network namespace with its own Orthanc (see tests/integration/orthanc.py):
the test process itself never talks to Orthanc, it asserts on the JSON facts a scenario reports.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import orthanc
import patience
from medsam2.testing.synthetic_ct import SyntheticSeries, write_synthetic_ct

REASON = orthanc.unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")

KEY_SLICE, RANGE = 55, (50, 59)


def _endpoint(server: orthanc.OrthancServer, **auth: str):
    from medsam2.pacs.config import PacsEndpoint

    return PacsEndpoint("orthanc", server.dicomweb_url, timeout_s=60, **auth)


def _store_folder(endpoint, folder: Path) -> list[str]:
    import pydicom

    from medsam2.pacs.transfer import store_instances

    return store_instances(endpoint, [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))])


def _count_instances(endpoint, study_uid: str) -> int:
    from medsam2.pacs.client import connect

    return len(connect(endpoint).search_for_instances(study_instance_uid=study_uid, get_remaining=True))


# --- scenarios: these run inside the namespace -------------------------------------------------------------


def scenario_round_trip(server: orthanc.OrthancServer, folder: str, graphs: str, box: list[int]) -> dict[str, Any]:
    """STOW the series, fetch it by QIDO/WADO, segment ten slices, STOW the SEG, read the SEG back."""
    import highdicom as hd

    from medsam2.io.dicom_seg import Algorithm, SegmentSpec, build_seg
    from medsam2.pacs.client import connect
    from medsam2.pacs.transfer import fetch_series, list_series, store_seg
    from test_dicom_roundtrip import segment

    endpoint = _endpoint(server)
    stored = _store_folder(endpoint, Path(folder))
    listed = list_series(endpoint)
    volume = fetch_series(endpoint, listed[0].study_uid, listed[0].series_uid)
    masks = segment(volume, Path(graphs), KEY_SLICE, tuple(box), RANGE)
    seg = build_seg(masks, volume, Algorithm("untrained-orthanc"), [SegmentSpec(1, "lesion", (255, 0, 0))])
    seg_uid = store_seg(endpoint, seg, volume.dicom)
    back = connect(endpoint).retrieve_instance(str(seg.StudyInstanceUID), str(seg.SeriesInstanceUID), seg_uid)
    read = hd.seg.Segmentation.from_dataset(back)
    frames = back.pixel_array.reshape(-1, *volume.voxels.shape[1:]).astype(bool)
    references = []
    for index, item in enumerate(back.PerFrameFunctionalGroupsSequence):
        uid = str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        k = volume.dicom.slice_uids.index(uid)
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        references.append(
            {
                "uid": uid,
                "slice": k,
                "pixels_equal": bool(np.array_equal(frames[index], masks[1][k])),
                "position_error_mm": float(np.max(np.abs(np.subtract(position, volume.geometry.position(k))))),
            }
        )
    return {
        "stored": len(stored),
        "series": [(s.series_uid, s.modality, s.instances) for s in listed],
        "slice_uids": list(volume.dicom.slice_uids),
        "voxels_sha256": hashlib.sha256(np.ascontiguousarray(volume.voxels).tobytes()).hexdigest(),
        "affine": volume.geometry.affine_lps().tolist(),
        "covered": [int(k) for k in np.flatnonzero(masks[1].any(axis=(1, 2)))],
        "seg_uid": seg_uid,
        "seg_sop_class": str(back.SOPClassUID),
        "seg_label": read.get_segment_description(1).segment_label,
        "seg_algorithm": [
            read.get_segment_description(1).algorithm_identification[0].AlgorithmName,
            read.get_segment_description(1).algorithm_identification[0].AlgorithmVersion,
        ],
        "references": references,
        "instances_after": _count_instances(endpoint, str(seg.StudyInstanceUID)),
    }


def scenario_nothing_invalid_is_stored(server: orthanc.OrthancServer, folder: str, other: str) -> dict[str, Any]:
    """A broken SEG, and a SEG whose source is not on the PACS, are refused before any byte is sent."""
    import copy

    from medsam2.errors import NotFound
    from medsam2.io.dicom_seg import Algorithm, build_seg
    from medsam2.io.dicom_series import read_dicom
    from medsam2.io.errors import InvalidSegmentation
    from medsam2.pacs.transfer import fetch_series, store_seg

    endpoint = _endpoint(server)
    _store_folder(endpoint, Path(folder))
    local = read_dicom(Path(folder))
    study = local.dicom.study_uid
    volume = fetch_series(endpoint, study, local.dicom.series_uid)
    mask = np.zeros(volume.voxels.shape, bool)
    mask[2:5, 8:20, 8:20] = True
    seg = build_seg({1: mask}, volume, Algorithm("v"))
    outcome: dict[str, Any] = {"before": _count_instances(endpoint, study)}
    broken = copy.deepcopy(seg)
    broken.PixelData = broken.PixelData[:10]
    try:
        store_seg(endpoint, broken, volume.dicom)
        outcome["broken"] = "stored"
    except InvalidSegmentation as exc:
        outcome["broken"] = str(exc)
    elsewhere = read_dicom(Path(other))  # same study, a series never sent to the PACS
    orphan = build_seg({1: np.ones(elsewhere.voxels.shape, bool)}, elsewhere, Algorithm("v"))
    try:
        store_seg(endpoint, orphan, elsewhere.dicom)
        outcome["orphan"] = "stored"
    except InvalidSegmentation as exc:
        outcome["orphan"] = str(exc)
    try:
        fetch_series(endpoint, study, "1.2.3.4.5")
        outcome["unknown"] = "fetched"
    except NotFound as exc:
        outcome["unknown"] = str(exc)
    outcome["after"] = _count_instances(endpoint, study)
    outcome["valid"] = store_seg(endpoint, seg, volume.dicom) == str(seg.SOPInstanceUID)
    outcome["after_valid"] = _count_instances(endpoint, study)
    return outcome


def scenario_credentials(server: orthanc.OrthancServer) -> dict[str, Any]:
    """Basic authentication: the right password lists series, a wrong one is PacsAccessDenied."""
    from medsam2.pacs.errors import PacsAccessDenied
    from medsam2.pacs.transfer import list_series

    outcome: dict[str, Any] = {"ok": len(list_series(_endpoint(server, username="medsam2", password="right")))}
    try:
        list_series(_endpoint(server, username="medsam2", password="wrong"))
        outcome["wrong"] = "listed"
    except PacsAccessDenied as exc:
        outcome["wrong"] = str(exc)
    return outcome


def scenario_cli(server: orthanc.OrthancServer, folder: str, out: str) -> dict[str, Any]:
    """``medsam2 pacs store / list / fetch`` by endpoint name from a TOML config."""
    import argparse
    import contextlib
    import io

    from medsam2.cli import pacs_cmd
    from medsam2.settings import Settings

    config = Path(out).parent / "pacs.toml"
    config.write_text(f'[endpoints.local]\nurl = "{server.dicomweb_url}"\n')
    parser = argparse.ArgumentParser(prog="medsam2")
    pacs_cmd.register(parser.add_subparsers(dest="command"))

    def run(*argv: str) -> str:
        args = parser.parse_args(["pacs", "--pacs-config", str(config), *argv])
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            assert args.run(args, Settings()) == 0
        return buffer.getvalue()

    stored = run("store", "local", folder)
    listed = run("list", "local", "--json")
    import json

    series = json.loads(listed)[0]
    fetched = run("fetch", "local", series["study_uid"], series["series_uid"], "--out", out)
    return {
        "stored": stored,
        "series": series,
        "fetched": fetched,
        "files": sorted(p.name for p in Path(out).iterdir()),
    }


# --- tests: these run in the test process and only read the scenarios' reports -----------------------------


@pytest.fixture(scope="module")
def big_series(tmp_path_factory: pytest.TempPathFactory) -> SyntheticSeries:
    return write_synthetic_ct(tmp_path_factory.mktemp("orthanc") / "ct", slices=100, size=512, seed=7)


def test_round_trip_through_orthanc(big_series: SyntheticSeries, graphs: dict[str, Path]) -> None:
    from medsam2.io.volumes import read_volume
    from test_dicom_roundtrip import lesion_box

    report = orthanc.run_isolated(
        scenario_round_trip,
        timeout_s=patience.LONG_COMMAND_S,
        folder=str(big_series.folder),
        graphs=str(graphs["present"]),
        box=list(lesion_box(big_series)),
    )
    assert report["stored"] == 100
    assert report["series"] == [[big_series.series_uid, "CT", 100]]
    # What came back over WADO-RS is, voxel for voxel and in the same order, what was read from the files.
    local = read_volume(big_series.folder)
    assert report["slice_uids"] == list(big_series.sop_uids)
    assert report["voxels_sha256"] == hashlib.sha256(np.ascontiguousarray(local.voxels).tobytes()).hexdigest()
    np.testing.assert_allclose(report["affine"], local.geometry.affine_lps(), atol=1e-6)
    covered = report["covered"]
    assert covered and RANGE[0] <= min(covered) and max(covered) <= RANGE[1]
    assert report["seg_sop_class"] == "1.2.840.10008.5.1.4.1.1.66.4"
    assert report["seg_label"] == "lesion" and report["seg_algorithm"] == ["MedSAM2", "untrained-orthanc"]
    references = report["references"]
    assert sorted(r["slice"] for r in references) == covered
    for reference in references:
        assert reference["uid"] == big_series.sop_uids[reference["slice"]]
        assert reference["pixels_equal"] and reference["position_error_mm"] < 1e-3
    assert report["instances_after"] == 101


def test_nothing_invalid_or_orphaned_reaches_orthanc(tmp_path: Path) -> None:
    main = write_synthetic_ct(tmp_path / "main", slices=8, size=32, seed=3)
    write_synthetic_ct(tmp_path / "other", slices=4, size=32, seed=4, study_uid=main.study_uid)
    report = orthanc.run_isolated(
        scenario_nothing_invalid_is_stored,
        timeout_s=patience.COMMAND_S,
        folder=str(tmp_path / "main"),
        other=str(tmp_path / "other"),
    )
    assert report["before"] == report["after"] == 8
    assert "pixel data has 10 bytes" in report["broken"]
    assert "which PACS orthanc does not hold; store the source series first" in report["orphan"]
    assert "series 1.2.3.4.5 of study" in report["unknown"] and "is not on PACS orthanc" in report["unknown"]
    assert report["valid"] and report["after_valid"] == 9


def test_credentials_are_checked_by_orthanc() -> None:
    report = orthanc.run_isolated(
        scenario_credentials, timeout_s=patience.COMMAND_S, orthanc_users={"medsam2": "right"}
    )
    assert report["ok"] == 0
    assert "answered HTTP 401" in report["wrong"] and "check the endpoint's token" in report["wrong"]


def test_pacs_cli_store_list_fetch(tmp_path: Path) -> None:
    series = write_synthetic_ct(tmp_path / "ct", slices=5, size=32, seed=5)
    report = orthanc.run_isolated(
        scenario_cli, timeout_s=patience.COMMAND_S, folder=str(series.folder), out=str(tmp_path / "fetched")
    )
    assert report["stored"].strip() == "stored 5 instance(s) on local"
    assert report["series"]["series_uid"] == series.series_uid and report["series"]["instances"] == 5
    assert report["files"] == sorted(f"{uid}.dcm" for uid in series.sop_uids)


def test_orthanc_refuses_to_start_outside_a_private_namespace(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="refusing to start Orthanc: this network namespace has interfaces"):
        orthanc.OrthancServer(tmp_path).__enter__()
