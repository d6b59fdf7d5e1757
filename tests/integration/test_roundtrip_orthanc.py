"""The clinical round trip through the service and a real Orthanc: PACS in, box, propagate, correct, SEG and SR back.

Inside a private network namespace (tests/integration/orthanc.py) a CT series goes into Orthanc, ``medsam2 serve``
runs with ``MEDSAM2_PACS_ORTHANC_URL``, and ``medsam2 client --pacs`` runs an actions file (box, propagate, a
negative click on a non-key slice, propagate) with ``--store``.  The test then checks, outside the namespace, that
Orthanc holds the SEG and SR in that study, that the SEG references the right instance frame by frame, and that its
masks equal ``medsam2 segment`` on the same series with the same actions file.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import orthanc
import patience
from medsam2.testing.synthetic_ct import SyntheticSeries, write_synthetic_ct
from serve_process import ServeProcess, medsam2_environment

REASON = orthanc.unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")
ROOT = Path(__file__).resolve().parents[2]
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"


def medsam2(*args: str) -> list[str]:
    """The ``medsam2`` command line, run with this interpreter."""
    return [sys.executable, "-m", "medsam2.cli.main", *args]


def _client(target: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        medsam2("client", "--server", target, "--no-progress", *args),
        capture_output=True,
        text=True,
        timeout=patience.LONG_COMMAND_S,
        env=medsam2_environment(),
    )


def _stats(server: orthanc.OrthancServer) -> dict[str, Any]:
    import urllib.request

    with urllib.request.urlopen(f"{server.url}/statistics", timeout=10) as answer:
        return json.loads(answer.read())


# --- the scenario: runs inside the namespace ---------------------------------------------------------------


def scenario_round_trip(
    server: orthanc.OrthancServer, folder: str, big: str, graphs: str, actions: str, out: str
) -> dict[str, Any]:
    """Store the series, serve, run the client with --store, read back what Orthanc holds."""
    import pydicom

    from medsam2.pacs.client import connect
    from medsam2.pacs.config import PacsEndpoint
    from medsam2.pacs.transfer import store_instances

    endpoint = PacsEndpoint("orthanc", server.dicomweb_url, timeout_s=60)
    series = [pydicom.dcmread(p) for p in sorted(Path(folder).glob("*.dcm"))]
    store_instances(endpoint, series)
    oversized = [pydicom.dcmread(p) for p in sorted(Path(big).glob("*.dcm"))]
    store_instances(endpoint, oversized)
    study = str(series[0].StudyInstanceUID)
    # The limit counts slices as the model holds them (at least 512x512): room for this series, not one more slice.
    voxel_limit = (len(series) + 1) * 512 * 512
    outcome: dict[str, Any] = {"study": study, "before": _stats(server)}
    workdir = Path(out)
    settings = {"MEDSAM2_PACS_ORTHANC_URL": server.dicomweb_url, "MEDSAM2_MAX_STUDY_VOXELS": str(voxel_limit)}
    with ServeProcess(graphs, log=workdir / "serve.log", env=settings) as service:
        started = time.perf_counter()
        done = _client(
            service.target,
            "--pacs",
            "orthanc",
            "--study",
            study,
            "--actions",
            actions,
            "--out",
            str(workdir / "result.dcm"),
            "--store",
            "orthanc",
            "--json",
        )
        outcome["seconds"] = time.perf_counter() - started
        outcome["client"] = {"rc": done.returncode, "stdout": done.stdout, "stderr": done.stderr[-3000:]}
        outcome["after"] = _stats(server)
        bad = {
            "unknown_endpoint": ("--pacs", "nowhere", "--study", study),
            "missing_study": ("--pacs", "orthanc", "--study", "1.2.826.0.1.3680043.99.1"),
            "over_the_limit": ("--pacs", "orthanc", "--study", str(oversized[0].StudyInstanceUID)),
        }
        outcome["bad"] = {}
        for name, flags in bad.items():
            run = _client(service.target, *flags, "--actions", actions, "--out", str(workdir / f"{name}.nii.gz"))
            outcome["bad"][name] = {"rc": run.returncode, "stderr": run.stderr[-2000:]}
        outcome["idempotent"] = _store_twice(service.target, study, series, endpoint)
        outcome["upload"] = _store_upload(service.target, folder, study, endpoint)
    client = connect(endpoint)
    found = client.search_for_series(study_instance_uid=study, fields=["Modality"])
    outcome["series"] = sorted((_tag(s, "00080060"), _tag(s, "0020000E")) for s in found)
    summary = json.loads(done.stdout) if done.returncode == 0 else {}
    stored = summary.get("stored", {})
    if stored:
        back = client.retrieve_instance(study, stored["seg_series"], stored["seg"])
        back.save_as(workdir / "from_orthanc.seg.dcm", enforce_file_format=True)
    outcome["summary"] = summary
    return outcome


def _store_twice(target: str, study: str, series: list, endpoint) -> dict[str, Any]:
    """StoreResult twice with one request id stores once; new results under a new id store a new pair."""
    from medsam2.api.client import Client
    from medsam2.api.pb.medsam2.v1 import segmentation_pb2 as pb
    from medsam2.pacs.client import connect

    client = Client(target, routing_key="idempotency")
    count = lambda: len(connect(endpoint).search_for_instances(study_instance_uid=study, get_remaining=True))  # noqa: E731
    try:
        sid = client.open_pacs("orthanc", study).session_id
        k = len(series) // 2
        info = pb.ObjectInfo(
            label="liver lesion",
            colour_rgb=[0, 200, 255],
            category=pb.CodedConcept(value="49755003", scheme="SCT", meaning="Morphologically Altered Structure"),
            type=pb.CodedConcept(value="52988006", scheme="SCT", meaning="Lesion"),
        )
        client.add_prompt(sid, 1, k, box=(20, 20, 44, 44), object_info=info)
        list(client.propagate(sid, first_slice=k, last_slice=k + 1))
        before = count()
        first = client.store_result(sid, "orthanc", request_id="store-once")
        seg = connect(endpoint).retrieve_instance(study, first.seg_series_uid, first.seg_sop_instance_uid)
        segment = seg.SegmentSequence[0]
        described = {
            "label": str(segment.SegmentLabel),
            "category": str(segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue),
            "type": str(segment.SegmentedPropertyTypeCodeSequence[0].CodeValue),
            "lab": [int(v) for v in segment.RecommendedDisplayCIELabValue],
            "algorithm": [
                str(segment.SegmentAlgorithmName),
                str(segment.SegmentationAlgorithmIdentificationSequence[0].AlgorithmVersion),
            ],
        }
        again = client.store_result(sid, "orthanc", request_id="store-once")
        middle = count()
        unchanged = client.store_result(sid, "orthanc", request_id="store-unchanged")
        after_unchanged = count()
        client.add_prompt(sid, 1, k + 1, points=[(32.0, 32.0, False)])
        list(client.propagate(sid, first_slice=k, last_slice=k + 1))
        changed = client.store_result(sid, "orthanc", request_id="store-changed")
        return {
            "before": before,
            "middle": middle,
            "after_unchanged": after_unchanged,
            "after": count(),
            "described": described,
            "same": first == again,
            "unchanged_same_uids": unchanged == first,
            "new_uid": changed.seg_sop_instance_uid != first.seg_sop_instance_uid,
        }
    finally:
        client.close()


def _store_upload(target: str, folder: str, study: str, endpoint) -> dict[str, Any]:
    """An upload that names its DICOM instances is stored over the series the PACS holds; wrong geometry is refused."""
    import dataclasses

    import grpc

    from medsam2.api.client import Client
    from medsam2.api.convert import geometry_to_pb
    from medsam2.io.volumes import read_volume
    from medsam2.pacs.client import connect

    volume = read_volume(Path(folder))
    source = volume.dicom
    identity = {
        "study_uid": source.study_uid,
        "series_uid": source.series_uid,
        "frame_of_reference_uid": str(source.datasets[0].FrameOfReferenceUID),
        "sop_instance_uids": list(source.slice_uids),
    }
    count = lambda: len(connect(endpoint).search_for_instances(study_instance_uid=study, get_remaining=True))  # noqa: E731
    k = volume.voxels.shape[0] // 2
    client = Client(target, routing_key="upload")
    outcome: dict[str, Any] = {}
    try:
        shifted = dataclasses.replace(volume.geometry, origin=tuple(v + 5.0 for v in volume.geometry.origin))
        for name, geometry in (("shifted", shifted), ("right", volume.geometry)):
            sid = client.create_session(
                volume.voxels, volume.spacing, modality="CT", geometry=geometry_to_pb(geometry), identity=identity
            ).session_id
            client.add_prompt(sid, 1, k, box=(20, 20, 44, 44))
            list(client.propagate(sid, first_slice=k, last_slice=k + 1))
            before = count()
            try:
                stored = client.store_result(sid, "orthanc")
                seg = connect(endpoint).retrieve_instance(study, stored.seg_series_uid, stored.seg_sop_instance_uid)
                frames = seg.PerFrameFunctionalGroupsSequence
                outcome[name] = {
                    "added": count() - before,
                    "references": [
                        str(f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
                        for f in frames
                    ],
                    "patient": [str(seg.PatientID), str(seg.StudyInstanceUID)],
                }
            except grpc.RpcError as exc:
                outcome[name] = {
                    "code": exc.code().name,
                    "details": exc.details(),
                    "added": count() - before,
                    "dicom_results_after": client.get_session(sid).dicom_results,
                }
            client.close_session(sid)
    finally:
        client.close()
    return outcome


def _tag(item: dict, tag: str) -> str:
    return str((item.get(tag, {}).get("Value") or [""])[0])


# --- the test: runs in the test process ------------------------------------------------------------------


def _actions(series: SyntheticSeries, folder: Path) -> tuple[Path, int]:
    from test_dicom_roundtrip import lesion_box

    key, row, col = series.lesion_voxel()
    x0, y0, x1, y1 = lesion_box(series)
    steps = [
        {"op": "box", "object": 1, "slice": key, "box": [x0, y0, x1, y1]},
        {"op": "propagate"},
        {"op": "click", "object": 1, "slice": key + 2, "point": [col, row], "positive": False},
        {"op": "propagate"},
    ]
    path = folder / "actions.json"
    path.write_text(json.dumps(steps))
    return path, key


def seg_masks(path: Path, sop_uids: tuple[str, ...], shape: tuple[int, int, int]) -> tuple[dict[int, np.ndarray], list]:
    """A SEG's masks per segment at the series' slices, and (frame, referenced uid, slice) per frame."""
    import highdicom as hd

    seg = hd.seg.segread(path)
    frames = seg.pixel_array.reshape(-1, *shape[1:]).astype(bool)
    masks: dict[int, np.ndarray] = {}
    references = []
    shared = seg.SharedFunctionalGroupsSequence[0]  # a macro the same for every frame (one segment) sits here
    for index, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        uid = str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        identification = item.get("SegmentIdentificationSequence") or shared.SegmentIdentificationSequence
        number = int(identification[0].ReferencedSegmentNumber)
        k = sop_uids.index(uid)
        masks.setdefault(number, np.zeros(shape, bool))[k] = frames[index]
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        references.append((index, uid, k, position))
    return masks, references


SHA = "5eed" * 16


def _repository(graphs: Path, folder: Path) -> Path:
    """The test graphs with a provenance record, as an exported model repository carries one."""
    from medsam2.models.provenance import ModelProvenance, write_provenance

    folder.mkdir()
    for onnx in graphs.glob("*.onnx"):
        (folder / onnx.name).symlink_to(onnx)
    write_provenance(folder, ModelProvenance(version=1, checkpoint_sha256=SHA, untrained=True))
    return folder


def test_client_round_trip_through_orthanc(tmp_path: Path, graphs: dict[str, Path]) -> None:
    series = write_synthetic_ct(tmp_path / "ct", slices=12, size=64, seed=21)
    repository = _repository(graphs["present"], tmp_path / "repository")
    big = write_synthetic_ct(tmp_path / "big", slices=14, size=64, seed=22)  # another study, over the limit
    actions, key = _actions(series, tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    report = orthanc.run_isolated(
        scenario_round_trip,
        timeout_s=patience.LONG_COMMAND_S,
        folder=str(series.folder),
        big=str(big.folder),
        graphs=str(repository),
        actions=str(actions),
        out=str(out),
    )
    assert report["client"]["rc"] == 0, report["client"]
    summary = report["summary"]
    # Orthanc holds the SEG and the SR in that study, under the UIDs the client printed.
    modalities = [m for m, _ in report["series"]]
    assert ("SEG", summary["stored"]["seg_series"]) in [tuple(s) for s in report["series"]]
    assert ("SR", summary["stored"]["sr_series"]) in [tuple(s) for s in report["series"]]
    assert modalities.count("CT") == 1
    assert summary["stored"]["study_uid"] == series.study_uid
    # The SEG read back from Orthanc: highdicom reads it; every frame references the slice it covers.
    from medsam2.io.volumes import read_volume

    local = read_volume(series.folder)
    from_pacs, references = seg_masks(out / "from_orthanc.seg.dcm", series.sop_uids, local.voxels.shape)
    assert list(from_pacs) == [1]
    for _, uid, k, position in references:
        assert uid == series.sop_uids[k]
        assert np.allclose(position, local.geometry.position(k), atol=1e-3)
    # The client's own copy is the same object, and its SR sits beside it, referencing it.
    written, _ = seg_masks(out / "result.dcm", series.sop_uids, local.voxels.shape)
    assert np.array_equal(written[1], from_pacs[1])
    import highdicom as hd

    report_sr = hd.sr.srread(out / "result.sr.dcm")
    group = report_sr.content.get_volumetric_roi_measurement_groups()[0]
    assert group.referenced_segment.referenced_sop_instance_uid == summary["stored"]["seg"]
    assert str(report_sr.SOPInstanceUID) == summary["stored"]["sr"]
    # ... and equals `medsam2 segment` on the same series with the same actions file.
    done = subprocess.run(
        medsam2(
            "segment",
            str(series.folder),
            "--actions",
            str(actions),
            "--graphs",
            str(graphs["present"]),
            "--out",
            str(tmp_path / "direct.npz"),
            "--no-progress",
        ),
        capture_output=True,
        text=True,
        timeout=patience.LONG_COMMAND_S,
        env=medsam2_environment(),
    )
    assert done.returncode == 0, done.stderr
    with np.load(tmp_path / "direct.npz") as npz:
        direct = npz["segs"] > 0
    assert direct.any() and np.array_equal(from_pacs[1], direct)
    assert sorted({k for _, _, k, _ in references}) == sorted(np.flatnonzero(direct.any(axis=(1, 2))).tolist())
    # Bad input: clear exit codes and messages, nothing opened or stored.
    bad = report["bad"]
    assert bad["unknown_endpoint"]["rc"] == 3 and "no PACS endpoint 'nowhere'" in bad["unknown_endpoint"]["stderr"]
    assert bad["missing_study"]["rc"] == 3 and "is not on PACS orthanc" in bad["missing_study"]["stderr"]
    limit = 13 * 512 * 512
    assert bad["over_the_limit"]["rc"] == 8
    assert f"becomes {14 * 512 * 512} voxels once each slice is resized" in bad["over_the_limit"]["stderr"]
    assert f"the limit is {limit}" in bad["over_the_limit"]["stderr"]
    # StoreResult is idempotent by request id: a retry stores nothing; a new id stores a new pair.
    twice = report["idempotent"]
    assert twice["same"] and twice["middle"] == twice["before"] + 2
    # Unchanged results under a new id are the same two objects again (no duplicates on the PACS) ...
    assert twice["unchanged_same_uids"] and twice["after_unchanged"] == twice["middle"]
    # ... and a corrected segmentation is a new pair.
    assert twice["new_uid"] and twice["after"] == twice["middle"] + 2
    # An upload that names its instances is stored over the series on the PACS (patient module and all) ...
    upload = report["upload"]
    assert upload["right"]["added"] == 2 and upload["right"]["patient"][1] == series.study_uid
    assert set(upload["right"]["references"]) <= set(series.sop_uids) and upload["right"]["references"]
    # ... unless its geometry disagrees with the instances it names: refused, nothing stored, session unchanged.
    shifted = upload["shifted"]
    assert shifted["code"] == "FAILED_PRECONDITION" and "on PACS but at" in shifted["details"]
    assert shifted["added"] == 0 and shifted["dicom_results_after"] is False
    # The SEG names what AddPrompt's object_info said, and the model's provenance as the algorithm version.
    described = twice["described"]
    assert (described["label"], described["category"], described["type"]) == ("liver lesion", "49755003", "52988006")
    from medsam2.io.dicom_seg import _cielab

    assert described["algorithm"] == ["MedSAM2", SHA[:12]]
    assert described["lab"] == list(_cielab((0, 200, 255)).value)  # the colour asked for, not the palette's
    assert summary["model_version"] == SHA[:12]
    print(json.dumps({"seconds": report["seconds"], "summary": summary}))
