"""Client -> service -> real Triton, against the same path on the embedded backend; Triton dying and returning."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import numpy as np
import pytest

import patience
from medsam2.api.client import Client
from medsam2.api.pb.medsam2.v1 import segmentation_pb2 as pb
from medsam2.backends.onnxruntime_backend import OnnxRuntimeBackend
from medsam2.engine.prompts import Box
from medsam2.engine.tracker import Direction, Tracker, TrackerOptions
from medsam2.server.app import start_server
from medsam2.server.config import ServerSettings
from medsam2_export.parity import synthetic_volume
from triton_server import model_counts, triton_process

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def study() -> tuple[np.ndarray, list]:
    return synthetic_volume(seed=21, slices=6, height=52, width=60)


def _segment_via_service(target: str, frames: np.ndarray, boxes: list) -> np.ndarray:
    client = Client(target)
    try:
        sid = client.create_session(frames, preset="none").session_id
        for obj_id, box in enumerate(boxes, start=1):
            client.add_box(sid, obj_id, 3, (box.x0, box.y0, box.x1, box.y1))
        streamed = list(client.propagate(sid))
        assert streamed and streamed[-1].done == streamed[-1].total
        labels, _ = client.result_labels(sid)
        client.close_session(sid)
        return labels
    finally:
        client.close()


def _serve(settings: ServerSettings, backend):
    running = start_server(settings, backend)
    return running, f"127.0.0.1:{running.port}"


def test_same_masks_through_triton_and_embedded(triton_url: str, graphs: dict[str, Path], study) -> None:
    from medsam2.backends.triton_backend import TritonBackend

    frames, boxes = study
    labels = {}
    for name, settings, backend in (
        (
            "embedded",
            ServerSettings(port=0, metrics_port=0, model_repository=graphs["present"]),
            OnnxRuntimeBackend(graphs["present"], threads=2),
        ),
        (
            "triton",
            ServerSettings(port=0, metrics_port=0, triton_url=triton_url),
            TritonBackend(triton_url, timeout_s=patience.TRITON_CALL_S),
        ),
    ):
        running, target = _serve(settings, backend)
        try:
            labels[name] = _segment_via_service(target, frames, boxes)
        finally:
            running.stop(2)
    assert labels["embedded"].any()
    assert np.array_equal(labels["embedded"], labels["triton"])


def test_triton_logits_equal_embedded_logits(triton_url: str, graphs: dict[str, Path], study) -> None:
    from medsam2.backends.triton_backend import TritonBackend

    frames, boxes = study
    runs = []
    for backend in (
        OnnxRuntimeBackend(graphs["present"], threads=2),
        TritonBackend(triton_url, timeout_s=patience.TRITON_CALL_S),
    ):
        tracker = Tracker(backend, frames, TrackerOptions())
        tracker.add_prompt(1, 3, box=boxes[0])
        runs.append([r.low_res for r in tracker.propagate(Direction.BOTH, start=3)])
    assert len(runs[0]) == len(runs[1]) > 0
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(*runs, strict=False)) <= 1e-5


def _four_boxes(boxes: list) -> list:
    """Four objects on the key slice: the study's two lesions and a shifted copy of each."""
    return [*boxes, *(Box(b.x0 + 4, b.y0 + 3, b.x1 + 4, b.y1 + 3) for b in boxes)]


def test_four_objects_are_encoded_once_per_slice_in_triton(triton_url: str, graphs: dict[str, Path], study) -> None:
    from medsam2.backends.triton_backend import TritonBackend

    frames, boxes = study
    boxes = _four_boxes(boxes)
    embedded = OnnxRuntimeBackend(graphs["present"], threads=2)
    running, target = _serve(ServerSettings(port=0, metrics_port=0, model_repository=graphs["present"]), embedded)
    try:
        want = _segment_via_service(target, frames, boxes)
    finally:
        running.stop(2)
    running, target = _serve(
        ServerSettings(port=0, metrics_port=0, triton_url=triton_url),
        TritonBackend(triton_url, timeout_s=patience.TRITON_CALL_S),
    )
    before = {m: model_counts(triton_url, m) for m in ("image_encoder", "track_step")}
    try:
        got = _segment_via_service(target, frames, boxes)
    finally:
        running.stop(2)
    after = {m: model_counts(triton_url, m) for m in ("image_encoder", "track_step")}
    encoded, encoder_runs = (a - b for a, b in zip(after["image_encoder"], before["image_encoder"], strict=True))
    steps = after["track_step"][0] - before["track_step"][0]
    # Every slice once: the key slice for the boxes (its features come back for the prompt heads, as on any
    # backend), every other slice inside the track_step ensemble, once for all four objects.
    assert steps == frames.shape[0] - 1, (steps, frames.shape)
    assert encoded == encoder_runs == frames.shape[0], (encoded, encoder_runs)
    assert want.any() and np.array_equal(got, want)


def test_triton_down_mid_propagation_then_back(triton_repository: Path, study) -> None:
    from medsam2.backends.triton_backend import TritonBackend

    frames, boxes = study
    with triton_process(triton_repository) as triton:
        running, target = _serve(
            ServerSettings(port=0, metrics_port=0, triton_url=triton.url),
            TritonBackend(triton.url, timeout_s=patience.TRITON_CALL_S),
        )
        client = Client(target)
        try:
            sid = client.create_session(frames, preset="none").session_id
            client.add_box(sid, 1, 0, (boxes[0].x0, boxes[0].y0, boxes[0].x1, boxes[0].y1))
            stream = client.propagate(sid)
            next(stream)
            triton.kill()
            with pytest.raises(grpc.RpcError) as info:
                list(stream)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "triton" in info.value.details().lower() or triton.url in info.value.details()
            assert client.stub.ListSessions(pb.ListSessionsRequest()).sessions  # the service itself stays up
            triton.start()
            deadline = time.monotonic() + 30
            while True:  # recovers once Triton is back (the backend reopens its channel)
                try:
                    streamed = list(client.propagate(sid))
                    break
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline
                    time.sleep(1)
            assert streamed[-1].done == streamed[-1].total == frames.shape[0]
        finally:
            client.close()
            running.stop(2)
