"""The session service in-process over loopback gRPC, on the embedded backend with the real graphs."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import patience
from medsam2.api.client import Client, slice_masks
from medsam2.api.pb.medsam2.v1 import segmentation_pb2 as pb
from medsam2.backends.onnxruntime_backend import OnnxRuntimeBackend
from medsam2.engine.protocols import ObjectPrompt, segment_volume
from medsam2.engine.tracker import Direction, Tracker, TrackerOptions
from medsam2.server.app import start_server
from medsam2.server.config import ServerSettings
from medsam2_export.parity import synthetic_volume

SLICES, ROWS, COLS = 6, 48, 56


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def study() -> tuple[np.ndarray, list]:
    frames, boxes = synthetic_volume(seed=12, slices=SLICES, height=ROWS, width=COLS)
    return frames, boxes


def _start(graphs: dict[str, Path], **overrides):
    settings = ServerSettings(
        port=0, metrics_port=overrides.pop("metrics_port", 0), model_repository=graphs["present"], **overrides
    )
    running = start_server(settings, OnnxRuntimeBackend(graphs["present"], threads=2))
    return running, f"127.0.0.1:{running.port}"


@pytest.fixture(scope="module")
def server(graphs: dict[str, Path]):
    metrics_port = _free_port()
    running, target = _start(graphs, metrics_port=metrics_port, max_sessions=4)
    yield running, target, metrics_port
    running.stop(2)


@pytest.fixture
def client(server) -> Client:
    c = Client(server[1])
    yield c
    c.close()


def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        result = call()
        if hasattr(result, "__iter__") and not isinstance(result, (pb.Session, pb.SliceResult)):
            list(result)
    return info.value.code(), info.value.details()


def test_service_masks_equal_the_engine(client: Client, study, graphs) -> None:
    frames, boxes = study
    session = client.create_session(frames, preset="none")
    box = boxes[0]
    client.add_box(session.session_id, 1, 3, (box.x0, box.y0, box.x1, box.y1))
    streamed = list(client.propagate(session.session_id))
    tracked = [r for r in streamed if getattr(r, "pass") != "final"]  # final messages follow the tracked ones
    assert [r.slice for r in tracked] == [3, 4, 5, 2, 1, 0]  # the key slice once
    assert tracked[-1].done == tracked[-1].total == len(tracked)
    labels, ids = client.result_labels(session.session_id)
    direct = segment_volume(
        Tracker(OnnxRuntimeBackend(graphs["present"], threads=2), frames, TrackerOptions()),
        [ObjectPrompt(1, 3, box=box)],
    )
    assert ids == [1]
    assert np.array_equal(labels > 0, direct[1])
    assert np.array_equal(slice_masks(streamed[1])[1], direct[1][4])
    assert client.close_session(session.session_id)
    assert not client.close_session(session.session_id)  # idempotent


def test_bad_requests_get_clear_statuses(client: Client, study) -> None:
    frames, boxes = study
    code, details = _code(lambda: client.stub.GetSession(pb.GetSessionRequest(session_id="nope")))
    assert code == grpc.StatusCode.NOT_FOUND and "nope" in details
    session = client.create_session(frames, preset="none")
    sid = session.session_id
    code, details = _code(lambda: client.add_box(sid, 1, SLICES, (1, 1, 10, 10)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "out of range" in details
    code, details = _code(lambda: client.add_box(sid, 1, 0, (1, 1, COLS + 5, 10)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "outside" in details
    code, details = _code(lambda: client.propagate(sid))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "no prompts" in details
    code, _ = _code(lambda: client.stub.ResetObjects(pb.ResetObjectsRequest(session_id=sid, object_ids=[9])))
    assert code == grpc.StatusCode.NOT_FOUND
    assert client.stub.GetSession(pb.GetSessionRequest(session_id=sid)).object_ids == []  # nothing half-added
    client.close_session(sid)


@pytest.mark.parametrize(
    ("header", "chunks", "status", "message"),
    [
        (
            pb.StudyHeader(shape=[2, 8, 8], dtype=pb.DATA_TYPE_UINT8),
            [b"\0" * 100],
            grpc.StatusCode.INVALID_ARGUMENT,
            "truncated",
        ),
        (
            pb.StudyHeader(shape=[2, 8, 8], dtype=pb.DATA_TYPE_UINT8),
            [b"\0" * 200],
            grpc.StatusCode.INVALID_ARGUMENT,
            "larger than the header",
        ),
        (pb.StudyHeader(shape=[2, 8, 8]), [b"\0" * 128], grpc.StatusCode.INVALID_ARGUMENT, "dtype"),
        (
            pb.StudyHeader(shape=[8, 8], dtype=pb.DATA_TYPE_UINT8),
            [b"\0" * 64],
            grpc.StatusCode.INVALID_ARGUMENT,
            "slices, rows, columns",
        ),
        (
            pb.StudyHeader(shape=[0, 8, 8], dtype=pb.DATA_TYPE_UINT8),
            [],
            grpc.StatusCode.INVALID_ARGUMENT,
            "zero slices",
        ),
        (
            pb.StudyHeader(shape=[4096, 4096, 4096], dtype=pb.DATA_TYPE_UINT8),
            [],
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "limit",
        ),
        (
            pb.StudyHeader(shape=[1, 2, 2], dtype=pb.DATA_TYPE_FLOAT32),
            [np.array([1, np.nan, 2, 3], "<f4").tobytes()],
            grpc.StatusCode.INVALID_ARGUMENT,
            "NaN",
        ),
        (
            pb.StudyHeader(pacs=pb.PacsReference(endpoint="hospital", study_uid="1.2", series_uid="1.2.3")),
            [],
            grpc.StatusCode.FAILED_PRECONDITION,
            "no PACS endpoint",
        ),
    ],
)
def test_bad_uploads(client: Client, header, chunks, status, message) -> None:
    def requests():
        yield pb.CreateSessionRequest(header=header)
        for chunk in chunks:
            yield pb.CreateSessionRequest(voxels=chunk)

    before = len(client.stub.ListSessions(pb.ListSessionsRequest()).sessions)
    code, details = _code(lambda: client.stub.CreateSession(requests()))
    assert code == status and message in details
    assert len(client.stub.ListSessions(pb.ListSessionsRequest()).sessions) == before


def test_cancel_mid_stream_frees_the_session(client: Client, study) -> None:
    frames, boxes = study
    sid = client.create_session(frames, preset="none").session_id
    box = boxes[0]
    client.add_box(sid, 1, 0, (box.x0, box.y0, box.x1, box.y1))
    stream = client.propagate(sid)
    next(stream)
    stream.cancel()
    deadline = time.monotonic() + 10
    while True:  # the lock is released once the server notices, within one slice
        try:
            client.add_box(sid, 2, 1, (box.x0, box.y0, box.x1, box.y1))
            break
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.ABORTED and time.monotonic() < deadline
    assert client.stub.GetSession(pb.GetSessionRequest(session_id=sid)).busy is False
    client.close_session(sid)


def test_health_reflection_and_metrics(server, client: Client, study) -> None:
    running, target, metrics_port = server
    health = health_pb2_grpc.HealthStub(client.channel)
    deadline = time.monotonic() + 10
    while (
        health.Check(health_pb2.HealthCheckRequest(service="medsam2.v1.SegmentationService")).status
        != health_pb2.HealthCheckResponse.SERVING
    ):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    for name in (
        "medsam2_rpc_requests_total",
        "medsam2_rpc_duration_seconds_bucket",
        "medsam2_active_sessions",
        "medsam2_backend_call_duration_seconds_bucket",
        "medsam2_backend_ready",
    ):
        assert name in text, name
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    reflect = reflection_pb2_grpc.ServerReflectionStub(client.channel)
    reply = next(reflect.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in reply.list_services_response.service}
    assert "medsam2.v1.SegmentationService" in names and "grpc.health.v1.Health" in names


def test_sessions_run_concurrently(client: Client, study) -> None:
    frames, boxes = study
    results: dict[str, list[int]] = {}
    errors: list[Exception] = []

    def work(name: str, box) -> None:
        try:
            sid = client.create_session(frames, preset="none").session_id
            client.add_box(sid, 1, 2, (box.x0, box.y0, box.x1, box.y1))
            results[name] = [r.slice for r in client.propagate(sid) if getattr(r, "pass") != "final"]
            client.close_session(sid)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f"s{i}", boxes[i % 2])) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(patience.COMMAND_S)  # a hang guard: three propagations on two loaded cores can take minutes
    assert not errors and len(results) == 3
    assert all(v == [2, 3, 4, 5, 1, 0] for v in results.values())  # the key slice once


def test_capacity_lru_eviction_and_exhaustion(graphs, study) -> None:
    frames, boxes = study
    running, target = _start(graphs, max_sessions=1)
    c = Client(target)
    try:
        first = c.create_session(frames[:3], preset="none").session_id
        second = c.create_session(frames[:3], preset="none").session_id  # evicts the idle first one
        code, _ = _code(lambda: c.stub.GetSession(pb.GetSessionRequest(session_id=first)))
        assert code == grpc.StatusCode.NOT_FOUND
        box = boxes[0]
        c.add_box(second, 1, 0, (box.x0, box.y0, box.x1, box.y1))
        stream = c.propagate(second)
        next(stream)  # the only session is now busy: nothing to evict
        code, details = _code(lambda: c.create_session(frames[:3], preset="none"))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "retry later" in details
        list(stream)
    finally:
        c.close()
        running.stop(2)


def test_bearer_token(graphs, study) -> None:
    running, target = _start(graphs, auth_token="s3cret")
    try:
        code, _ = _code(lambda: Client(target).stub.ListSessions(pb.ListSessionsRequest()))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        code, _ = _code(lambda: Client(target, token="wrong").create_session(study[0][:2], preset="none"))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        good = Client(target, token="s3cret")
        assert good.stub.ListSessions(pb.ListSessionsRequest(), metadata=good.metadata).sessions == []
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(target))
        health.Check(health_pb2.HealthCheckRequest(service=""))  # probes need no token
    finally:
        running.stop(2)


def test_shutdown_drains_a_stream_in_flight(graphs, study) -> None:
    frames, boxes = study
    running, target = _start(graphs)
    c = Client(target)
    sid = c.create_session(frames, preset="none").session_id
    box = boxes[0]
    c.add_box(sid, 1, 0, (box.x0, box.y0, box.x1, box.y1))
    stream = c.propagate(sid)
    first = next(stream)
    stopper = threading.Thread(target=running.stop, args=(60,))
    stopper.start()
    rest = list(stream)  # the stream completes although the server is stopping
    stopper.join(60)
    assert first.total == 1 + len([r for r in rest if getattr(r, "pass") != "final"]) == SLICES
    c.close()


def test_in_state_protocol_with_a_correction(client: Client, study, graphs) -> None:
    frames, boxes = study
    box = boxes[0]
    sid = client.create_session(frames, preset="none").session_id
    client.add_box(sid, 1, 1, (box.x0, box.y0, box.x1, box.y1))
    forward = list(client.propagate(sid, protocol=pb.PROTOCOL_IN_STATE, direction=pb.DIRECTION_FORWARD, start_slice=1))
    assert [r.slice for r in forward] == [1, 2, 3, 4, 5]
    click = pb.Point(x=(box.x0 + box.x1) / 2, y=(box.y0 + box.y1) / 2, positive=False)
    client.stub.AddPrompt(pb.AddPromptRequest(session_id=sid, object_id=1, slice=3, points=[click]))
    resumed = list(client.propagate(sid, protocol=pb.PROTOCOL_IN_STATE, direction=pb.DIRECTION_FORWARD, start_slice=4))
    assert [r.slice for r in resumed] == [4, 5]
    code, details = _code(
        lambda: client.propagate(sid, protocol=pb.PROTOCOL_IN_STATE, start_slice=0, first_slice=2, last_slice=5)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "outside the slice range" in details
    client.close_session(sid)

    tracker = Tracker(OnnxRuntimeBackend(graphs["present"], threads=2), frames, TrackerOptions())
    tracker.add_prompt(1, 1, box=box)
    list(tracker.propagate(Direction.FORWARD, start=1))
    tracker.add_prompt(1, 3, points=np.array([[click.x, click.y]]), labels=np.array([0]))
    direct = list(tracker.propagate(Direction.FORWARD, start=4))
    for got, want in zip(resumed, direct, strict=False):
        assert np.array_equal(slice_masks(got)[1], want.masks(ROWS, COLS)[0])
