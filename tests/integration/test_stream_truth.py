"""What a Propagate streams is what is stored, and labels name their objects: a real server with the real graphs.

A viewer paints every streamed slice, then the final messages; the result must be exactly GetResult's masks,
with the 3D largest-component step on (finals are sent) and off (nothing is resent). Two objects, one inside
the other, survive every label format with its label map; GetResult and SaveAnnotation agree; and each object's
measurements do not change when the other is added.
"""

from __future__ import annotations

import gzip
import http.client
import io
import json
from pathlib import Path

import grpc
import nibabel as nib
import numpy as np
import pytest

from medsam2.api.client import Client, ServiceError, slice_masks
from medsam2.api.pb.medsam2.v1 import segmentation_pb2 as pb
from medsam2.backends.onnxruntime_backend import OnnxRuntimeBackend
from medsam2.datasets.training_npz import read_training_case
from medsam2.io.labels import NIFTI_EXTENSION_CODE, OVERLAP_RULE
from medsam2.server.app import start_server
from medsam2.server.config import ServerSettings
from medsam2_export.parity import synthetic_volume
from serve_process import free_port

SLICES, ROWS, COLS = 7, 48, 56
SPACING = (2.0, 0.8, 0.7)


@pytest.fixture(scope="module")
def study() -> tuple[np.ndarray, list]:
    return synthetic_volume(seed=33, slices=SLICES, height=ROWS, width=COLS)


@pytest.fixture(scope="module")
def server(graphs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    store = tmp_path_factory.mktemp("annotations")
    settings = ServerSettings(
        port=0, metrics_port=0, http_port=free_port(), model_repository=graphs["present"], annotations_dir=store
    )
    running = start_server(settings, OnnxRuntimeBackend(graphs["present"], threads=2))
    yield running, store
    running.stop(2)


@pytest.fixture
def client(server) -> Client:
    c = Client(f"127.0.0.1:{server[0].port}")
    yield c
    c.close()


def _stored(client: Client, sid: str) -> dict[int, np.ndarray]:
    return client.object_masks(sid)


def _paint(view: dict[tuple[int, int], np.ndarray], messages: list[pb.SliceResult]) -> None:
    """What a viewer does: each message replaces the masks of its objects on its slice."""
    for message in messages:
        for obj_id, mask in slice_masks(message).items():
            view[message.slice, obj_id] = mask


def _assert_view_is_stored(view: dict[tuple[int, int], np.ndarray], stored: dict[int, np.ndarray]) -> None:
    for obj_id, volume in stored.items():
        for k in range(SLICES):
            painted = view.get((k, obj_id), np.zeros((ROWS, COLS), bool))
            assert np.array_equal(painted, volume[k]), (obj_id, k)


def _box(boxes: list, i: int) -> tuple[float, float, float, float]:
    b = boxes[i]
    return (b.x0, b.y0, b.x1, b.y1)


def test_the_stream_ends_with_the_stored_masks(client: Client, study) -> None:
    frames, boxes = study
    session = client.create_session(frames, SPACING, preset="none")
    sid = session.session_id
    assert session.postprocessing.largest_component and session.postprocessing.fill_hole_area == 8
    view: dict[tuple[int, int], np.ndarray] = {}
    _paint(view, [client.add_box(sid, 1, 2, _box(boxes, 0)), client.add_box(sid, 2, 4, _box(boxes, 1))])
    messages = list(client.propagate(sid))
    tracked = [m for m in messages if not m.final]
    finals = [m for m in messages if m.final]
    # Two key slices: each object's pass streams every slice once (its key slice is not counted twice).
    assert [m.done for m in tracked] == list(range(1, 2 * SLICES + 1))
    assert {m.total for m in messages} == {2 * SLICES}
    assert {getattr(m, "pass") for m in tracked} == {"forward", "backward"} and not any(m.final for m in tracked)
    assert finals, "the largest-component step changed nothing: the test needs a study where it does"
    assert messages[-len(finals) :] == finals and {getattr(m, "pass") for m in finals} == {"final"}
    _paint(view, messages)
    stored = _stored(client, sid)
    assert set(stored) == {1, 2} and all(m.any() for m in stored.values())
    _assert_view_is_stored(view, stored)

    # A correction: the stream of the re-tracking, then its finals, again end with the stored masks.
    click = boxes[0]
    points = [((click.x0 + click.x1) / 2, (click.y0 + click.y1) / 2, False)]
    _paint(view, [client.add_prompt(sid, 1, 4, points=points, correction=True)])
    messages = list(client.propagate(sid))
    assert messages and getattr(messages[0], "pass") == "correction"
    _paint(view, messages)
    _assert_view_is_stored(view, _stored(client, sid))

    # A viewer that lost its stream re-reads the stored masks; a second Propagate has nothing to stream.
    assert list(client.propagate(sid)) == []
    reread: dict[tuple[int, int], np.ndarray] = {}
    replies = list(client.slices(sid))
    assert [m.slice for m in replies] == list(range(SLICES)) and all(m.final for m in replies)
    assert all({o.object_id for o in m.objects} == {1, 2} for m in replies)
    _paint(reread, replies)
    _assert_view_is_stored(reread, _stored(client, sid))
    assert [m.slice for m in client.slices(sid, 2, 3)] == [2, 3]
    with pytest.raises(ServiceError) as info:
        list(client.slices(sid, 3, SLICES))
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT and info.value.field == "last_slice"
    client.close_session(sid)


def test_without_largest_component_nothing_is_resent(client: Client, study) -> None:
    frames, boxes = study
    session = client.create_session(
        frames, SPACING, preset="none", postprocessing=pb.PostProcessing(largest_component=False)
    )
    sid = session.session_id
    assert not session.postprocessing.largest_component
    assert client.get_session(sid).postprocessing.fill_hole_area == 8
    view: dict[tuple[int, int], np.ndarray] = {}
    _paint(view, [client.add_box(sid, 1, 2, _box(boxes, 0))])
    messages = list(client.propagate(sid))
    assert len(messages) == SLICES and all(m.final for m in messages)  # the stream is the result as it goes
    _paint(view, messages)
    _assert_view_is_stored(view, _stored(client, sid))
    # The same study with the step on loses voxels the stream showed: the step really runs only when asked.
    with_step = client.create_session(frames, SPACING, preset="none").session_id
    client.add_box(with_step, 1, 2, _box(boxes, 0))
    list(client.propagate(with_step))
    stored_off, stored_on = _stored(client, sid)[1], _stored(client, with_step)[1]
    assert stored_on.sum() < stored_off.sum() and not (stored_on & ~stored_off).any()
    for bad, field in (
        (pb.PostProcessing(fill_hole_area=20000), "header.postprocessing.fill_hole_area"),
        (pb.PostProcessing(largest_component=True), "header.postprocessing.largest_component"),
    ):
        with pytest.raises(ServiceError) as info:
            client.create_session(frames, SPACING, preset="none", video=True, postprocessing=bad)
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT and info.value.field == field
    client.close_session(sid)
    client.close_session(with_step)


def _square(top: int, left: int, size: int) -> np.ndarray:
    mask = np.zeros((ROWS, COLS), bool)
    mask[top : top + size, left : left + size] = True
    return mask


def _label_files(client: Client, sid: str) -> dict[str, tuple[np.ndarray, dict, pb.ResultChunk]]:
    """Every label format with object-id values: (labels, the label map that travelled inside, first chunk)."""
    out = {}
    values = pb.LABEL_VALUES_OBJECT_IDS
    data, first = client.result(sid, pb.RESULT_FORMAT_RAW_LABELS, label_values=values)
    out["raw"] = (np.frombuffer(data, "<u2").reshape(tuple(first.shape)), {}, first)
    data, first = client.result(sid, pb.RESULT_FORMAT_NPZ, label_values=values)
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        out["npz"] = (npz["segs"], json.loads(str(npz["labels"])), first)
    data, first = client.result(sid, pb.RESULT_FORMAT_NIFTI_GZ, label_values=values)
    image = nib.Nifti1Image.from_bytes(gzip.decompress(data))
    (extension,) = [e for e in image.header.extensions if e.get_code() == NIFTI_EXTENSION_CODE]
    labels = np.asarray(image.dataobj).transpose(2, 1, 0)
    out["nifti"] = (labels, json.loads(extension.get_content()), first)
    return out


def test_overlapping_objects_survive_every_label_format(server, client: Client, study) -> None:
    running, store = server
    frames, _ = study
    sid = client.create_session(frames, SPACING, preset="none").session_id
    outer, inner = _square(8, 8, 30), _square(16, 18, 10)
    info = pb.ObjectInfo(label="liver", colour_rgb=[10, 20, 30])
    reply = client.add_prompt(sid, 900, 3, mask=outer, object_info=info)
    measured_alone = _measure(running, sid)
    reply = client.add_prompt(sid, 5, 3, mask=inner)
    # The AddPrompt reply carries every object's mask on the slice, not only the prompted one.
    assert {o.object_id for o in reply.objects} == {5, 900}
    stored = _stored(client, sid)
    assert (stored[5] & stored[900]).any() and not (stored[5] & ~stored[900]).any(), "5 lies inside 900"
    for name, (labels, travelled, first) in _label_files(client, sid).items():
        assert np.array_equal(labels == 5, stored[5]), name  # the smaller object wins where they overlap
        assert np.array_equal(labels == 900, stored[900] & ~stored[5]), name
        entries = [(e.value, e.object_id, e.name, list(e.colour_rgb)) for e in first.labels]
        assert entries[0][:3] == (5, 5, "object 5") and entries[1] == (900, 900, "liver", [10, 20, 30]), name
        if travelled:
            assert travelled["overlap"] == OVERLAP_RULE and travelled["values"] == "object_ids"
            assert [(e["value"], e["object_id"], e["name"]) for e in travelled["labels"]] == [
                (5, 5, "object 5"),
                (900, 900, "liver"),
            ], name
    # Rank values follow the same rule: label 1 is object 5, label 2 object 900, and both survive.
    ranks, ids = client.result_labels(sid)
    assert ids == [5, 900] and np.array_equal(ranks == 1, stored[5]) and (ranks == 2).any()
    # SaveAnnotation writes the same label volume as GetResult's object-id labels.
    saved = client.save_annotation(sid, case_name="nested")
    case = read_training_case(store / saved.folder / saved.case_file)
    assert np.array_equal(case.gts, _label_files(client, sid)["raw"][0]) and list(saved.object_ids) == [5, 900]
    # Each object is measured on its own mask: adding the inner object does not shrink the outer one.
    measured = _measure(running, sid)
    assert measured[900] == measured_alone[900] and measured[5]["voxels"] == int(stored[5].sum())
    client.close_session(sid)


def _measure(running, sid: str) -> dict[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", running.http_port, timeout=60)
    connection.request(
        "POST",
        "/gateway/v1/Measurements",
        body=json.dumps({"sessionId": sid}),
        headers={"Content-Type": "application/json"},
    )
    response = connection.getresponse()
    reply = json.loads(response.read())
    connection.close()
    assert response.status == 200, reply
    return {o["objectId"]: o for o in reply["objects"]}


def test_object_id_zero_is_refused(client: Client, study) -> None:
    frames, boxes = study
    sid = client.create_session(frames, SPACING, preset="none").session_id
    with pytest.raises(ServiceError) as info:
        client.add_box(sid, 0, 2, _box(boxes, 0))
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT and info.value.field == "object_id"
    assert "object_id must be 1 or more" in info.value.details()
    assert list(client.get_session(sid).object_ids) == []
    client.close_session(sid)
