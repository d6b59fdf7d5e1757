"""Careless and hostile clients: stalled uploads, tiny requests that claim huge sizes, runaway state, early closes."""

from __future__ import annotations

import gc
import threading
import time
import weakref
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from medsam2.api.client import Client
from medsam2.api.masks import encode_rle
from medsam2.api.pb.medsam2.v1 import segmentation_pb2 as pb
from medsam2.backends.onnxruntime_backend import OnnxRuntimeBackend
from medsam2.server.app import start_server
from medsam2.server.config import ServerSettings
from medsam2_export.parity import synthetic_volume
from rpc_errors import rpc_failure, rpc_reason

ROWS, COLS = 48, 56


def rss_bytes() -> int:
    """Resident set size of this process (the in-process server's memory)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def _start(graphs: dict[str, Path], tmp_path: Path | None = None, **overrides):
    if tmp_path is not None:
        tokens = tmp_path / "tokens"
        tokens.write_text("alice:alice-secret\nbob:bob-secret\n")
        overrides["auth_tokens"] = tokens
    settings = ServerSettings(port=0, metrics_port=0, model_repository=graphs["present"], **overrides)
    running = start_server(settings, OnnxRuntimeBackend(graphs["present"], threads=2))
    return running, f"127.0.0.1:{running.port}"


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return synthetic_volume(seed=8, slices=6, height=ROWS, width=COLS)[0]


def test_stalled_uploads_leave_health_and_other_tenants_served(graphs, frames: np.ndarray, tmp_path: Path) -> None:
    running, target = _start(
        graphs, tmp_path, workers=16, max_concurrent_uploads=8, max_uploads_per_principal=2, upload_idle_timeout_s=3.0
    )
    release = threading.Event()
    outcomes: list[grpc.StatusCode] = []
    stalled_at = time.monotonic()

    def stall() -> None:
        def requests():
            yield pb.CreateSessionRequest(header=pb.StudyHeader(shape=[4, 64, 64], dtype=pb.DATA_TYPE_UINT8))
            yield pb.CreateSessionRequest(voxels=b"\0" * 100)
            release.wait(60)

        c = Client(target, token="alice-secret")
        try:
            c.stub.CreateSession(requests(), metadata=c.metadata, timeout=60)
        except grpc.RpcError as exc:
            outcomes.append(exc.code())
        finally:
            c.close()

    stallers = [threading.Thread(target=stall, daemon=True) for _ in range(20)]
    for t in stallers:
        t.start()
    bob = Client(target, token="bob-secret")
    try:
        time.sleep(1.0)  # every staller has sent its header and 100 bytes
        for port in (running.port, running.ops_port):
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                started = time.monotonic()
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
                assert time.monotonic() - started < 1.0, f"health on port {port} took too long"
        with grpc.insecure_channel(f"127.0.0.1:{running.ops_port}") as channel:  # the chart's liveness probe
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="medsam2.liveness"), timeout=1
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        sid = bob.create_session(frames, preset="none").session_id
        bob.add_box(sid, 1, 2, (10, 10, 40, 40))
        tracked = [r.slice for r in bob.propagate(sid) if getattr(r, "pass") != "final"]
        assert tracked == [2, 3, 4, 5, 1, 0]  # the key slice once; final messages follow
        labels, ids = bob.result_labels(sid)
        assert ids == [1] and labels.shape == frames.shape
        for t in stallers:  # alice's two admitted ones are cancelled by the idle timeout, the rest refused at once
            t.join(max(0.1, stalled_at + 15 - time.monotonic()))
        assert len(outcomes) == 20, outcomes
        assert outcomes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 18
        assert all(
            code in (grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED)
            for code in outcomes
            if code != grpc.StatusCode.RESOURCE_EXHAUSTED
        )
    finally:
        release.set()
        bob.close()
        running.stop(1)


def test_tiny_requests_that_claim_huge_sizes_are_refused(graphs, frames: np.ndarray) -> None:
    running, target = _start(graphs)
    c = Client(target)
    try:
        sid = c.create_session(frames, preset="none").session_id
        gc.collect()
        before = rss_bytes()
        thin = pb.StudyHeader(shape=[2000, 1, 1], dtype=pb.DATA_TYPE_UINT8)  # 2 KB that would be 500 MiB at 512²
        error = rpc_failure(
            lambda: c.stub.CreateSession(
                iter([pb.CreateSessionRequest(header=thin), pb.CreateSessionRequest(voxels=b"\1" * 2000)])
            )
        )
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "resized to 512x512" in error.details()
        overflow = pb.StudyHeader(shape=[2**32 - 1] * 3, dtype=pb.DATA_TYPE_FLOAT64)  # > int64 voxels
        error = rpc_failure(lambda: c.stub.CreateSession(iter([pb.CreateSessionRequest(header=overflow)])))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and str((2**32 - 1) ** 3) in error.details()
        huge_rle = pb.Mask(
            rows=32768, columns=32768, encoding=pb.MASK_ENCODING_RLE, data=np.array([2**30], "<u4").tobytes()
        )  # 4 bytes claiming 1 Gi pixels
        request = pb.AddPromptRequest(session_id=sid, object_id=1, slice=0, mask=huge_rle)
        error = rpc_failure(lambda: c.stub.AddPrompt(request))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "32768x32768" in error.details()
        right_size_wrong_runs = pb.Mask(
            rows=ROWS, columns=COLS, encoding=pb.MASK_ENCODING_RLE, data=np.zeros(ROWS * COLS + 5, "<u4").tobytes()
        )
        error = rpc_failure(
            lambda: c.stub.AddPrompt(pb.AddPromptRequest(session_id=sid, object_id=1, mask=right_size_wrong_runs))
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "more runs" in error.details()
        long_label = pb.StudyHeader(shape=[1, 2, 2], dtype=pb.DATA_TYPE_UINT8, label="x" * 300)
        error = rpc_failure(
            lambda: c.stub.CreateSession(
                iter([pb.CreateSessionRequest(header=long_label), pb.CreateSessionRequest(voxels=b"\0" * 4)])
            )
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "header.label" in error.details()
        gc.collect()
        assert rss_bytes() - before < 50 * 2**20
        # A mask of the right size still works.
        ok = np.zeros((ROWS, COLS), bool)
        ok[10:30, 10:30] = True
        reply = c.stub.AddPrompt(
            pb.AddPromptRequest(
                session_id=sid,
                object_id=1,
                slice=0,
                mask=pb.Mask(rows=ROWS, columns=COLS, encoding=pb.MASK_ENCODING_RLE, data=encode_rle(ok)),
            )
        )
        assert reply.slice == 0
    finally:
        c.close()
        running.stop(1)


def _study_bytes(frames: np.ndarray) -> int:
    return frames.shape[0] * 512 * 512


def test_state_cap_drops_cached_features_then_refuses(graphs, frames: np.ndarray) -> None:
    cap = _study_bytes(frames) + 3 * 2**20  # room for the outputs, not for every slice's cached features
    running, target = _start(graphs, max_state_bytes=cap)
    c = Client(target)
    try:
        sid = c.create_session(frames, preset="none").session_id
        c.add_box(sid, 1, 0, (10, 10, 40, 40))
        tracked = [r for r in c.propagate(sid) if getattr(r, "pass") != "final"]  # finals follow the tracked slices
        assert len(tracked) == frames.shape[0]  # completes: the cache is shed as it grows
        session = c.stub.GetSession(pb.GetSessionRequest(session_id=sid))
        assert 0 < session.state_bytes <= cap
        c.close_session(sid)
    finally:
        c.close()
        running.stop(1)

    cap = _study_bytes(frames) + 400_000  # not even the tracked outputs fit
    running, target = _start(graphs, max_state_bytes=cap)
    c = Client(target)
    try:
        sid = c.create_session(frames, preset="none").session_id
        c.add_box(sid, 1, 0, (10, 10, 40, 40))
        got: list[pb.SliceResult] = []
        error = rpc_failure(lambda: got.extend(c.propagate(sid)))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "state limit" in error.details()
        assert rpc_reason(error) == "STATE_LIMIT" and len(got) < frames.shape[0]
        assert any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in rpc_status.from_call(error).details)
    finally:
        c.close()
        running.stop(1)


def test_close_ends_a_running_propagate_within_a_slice(graphs) -> None:
    long_study = synthetic_volume(seed=9, slices=14, height=ROWS, width=COLS)[0]
    running, target = _start(graphs)
    c, closer = Client(target), Client(target)
    try:
        sid = c.create_session(long_study, preset="none").session_id
        c.add_box(sid, 1, 0, (10, 10, 40, 40))
        stream = c.propagate(sid, protocol=pb.PROTOCOL_IN_STATE, direction=pb.DIRECTION_FORWARD, start_slice=0)
        next(stream)
        assert closer.close_session(sid)
        after: list[pb.SliceResult] = []
        error = rpc_failure(lambda: after.extend(stream))
        assert error.code() == grpc.StatusCode.NOT_FOUND and rpc_reason(error) == "SESSION_CLOSED"
        assert len(after) <= 2, f"{len(after)} slices came after CloseSession"
        assert running.registry.list(principal="anonymous") == []
    finally:
        c.close()
        closer.close()
        running.stop(1)


def test_close_and_eviction_free_memory_with_the_collector_off(graphs, frames: np.ndarray) -> None:
    running, target = _start(graphs, max_sessions=1)
    c = Client(target)
    gc.collect()
    gc.disable()
    try:

        def open_tracked() -> tuple[str, weakref.ref]:
            sid = c.create_session(frames[:3], preset="none").session_id
            c.add_box(sid, 1, 1, (10, 10, 40, 40))
            list(c.propagate(sid))
            return sid, weakref.ref(running.registry.get(sid, principal="anonymous").tracker)

        sid, tracker = open_tracked()
        assert tracker() is not None
        c.close_session(sid)
        assert tracker() is None, "a closed session's tracker is still alive (a reference cycle?)"
        _, evicted = open_tracked()
        open_tracked()  # max_sessions=1: evicts the previous one
        assert evicted() is None, "an evicted session's tracker is still alive"
    finally:
        gc.enable()
        c.close()
        running.stop(1)
