"""Errors reach a real gRPC client with google.rpc details, without server tracebacks, and with the right codes."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from prometheus_client import REGISTRY

from medsam2.api.client import Client
from medsam2.api.pb.medsam2.v1 import segmentation_pb2 as pb
from medsam2.backends.onnxruntime_backend import OnnxRuntimeBackend
from medsam2.errors import CapacityExceeded, InvalidInput, Medsam2Error, OutputNotWritable, SessionEvicted
from medsam2.server.app import start_server
from medsam2.server.config import ServerSettings
from medsam2.server.status import rich_status
from medsam2_export.parity import synthetic_volume
from rpc_errors import rpc_failure

SLICES, ROWS, COLS = 4, 40, 48


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return synthetic_volume(seed=3, slices=SLICES, height=ROWS, width=COLS)[0]


@pytest.fixture(scope="module")
def server(graphs: dict[str, Path]):
    settings = ServerSettings(port=0, metrics_port=0, model_repository=graphs["present"], max_sessions=1)
    running = start_server(settings, OnnxRuntimeBackend(graphs["present"], threads=1))
    yield running, f"127.0.0.1:{running.port}"
    running.stop(1)


@pytest.fixture
def client(server) -> Client:
    c = Client(server[1])
    yield c
    c.close()


def _details(error: grpc.RpcError) -> dict[str, object]:
    status = rpc_status.from_call(error)
    assert status is not None, "the status carries no google.rpc details"
    assert status.code == error.code().value[0] and status.message == error.details()
    found: dict[str, object] = {}
    for any_detail in status.details:
        for kind in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest, error_details_pb2.RetryInfo):
            if any_detail.Is(kind.DESCRIPTOR):
                detail = kind()
                any_detail.Unpack(detail)
                found[kind.__name__] = detail
    return found


def test_invalid_argument_names_the_field(client: Client) -> None:
    error = rpc_failure(lambda: client.stub.Propagate(pb.PropagateRequest(session_id="x", direction=17)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = _details(error)
    assert details["ErrorInfo"].domain == "medsam2" and details["ErrorInfo"].reason == "INVALID_INPUT"
    violation = details["BadRequest"].field_violations[0]
    assert violation.field == "direction" and "unknown value 17" in violation.description
    assert "RetryInfo" not in details


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.GetResultRequest(session_id="x", format=9), "format"),
        (pb.PropagateRequest(session_id="x", protocol=7), "protocol"),
        (pb.PropagateRequest(session_id="x", encoding=5), "encoding"),
        (
            pb.AddPromptRequest(session_id="x", object_id=1, mask=pb.Mask(rows=1, columns=1, encoding=4, data=b"\x80")),
            "mask.encoding",
        ),
        (pb.GetResultRequest(session_id="x", chunk_bytes=1), "chunk_bytes"),
        (pb.GetSessionRequest(session_id="s" * 129), "session_id"),
    ],
)
def test_unknown_enums_and_bad_sizes_are_invalid_argument(client: Client, request_, field: str) -> None:
    method = {
        "GetResultRequest": client.stub.GetResult,
        "PropagateRequest": client.stub.Propagate,
        "AddPromptRequest": client.stub.AddPrompt,
        "GetSessionRequest": client.stub.GetSession,
    }
    error = rpc_failure(lambda: method[type(request_).__name__](request_))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _details(error)["BadRequest"].field_violations[0].field == field


def test_unknown_header_enum_in_an_upload(client: Client) -> None:
    header = pb.StudyHeader(shape=[1, 2, 2], dtype=pb.DATA_TYPE_UINT8, kind=42)
    error = rpc_failure(
        lambda: client.stub.CreateSession(
            iter([pb.CreateSessionRequest(header=header), pb.CreateSessionRequest(voxels=b"\0" * 4)])
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _details(error)["BadRequest"].field_violations[0].field == "header.kind"


def test_a_permanent_refusal_has_no_retry_info(client: Client) -> None:
    header = pb.StudyHeader(shape=[4096, 4096, 4096], dtype=pb.DATA_TYPE_UINT8)
    error = rpc_failure(lambda: client.stub.CreateSession(iter([pb.CreateSessionRequest(header=header)])))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = _details(error)
    assert details["ErrorInfo"].reason == "STUDY_TOO_LARGE"
    assert "RetryInfo" not in details  # waiting does not make the study smaller (a full service does send it)


def test_session_not_found_versus_evicted(client: Client, frames: np.ndarray) -> None:
    error = rpc_failure(lambda: client.stub.GetSession(pb.GetSessionRequest(session_id="never-was")))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert _details(error)["ErrorInfo"].reason == "SESSION_NOT_FOUND"
    first = client.create_session(frames, preset="none").session_id
    second = client.create_session(frames, preset="none").session_id  # max_sessions=1: the idle first is evicted
    error = rpc_failure(lambda: client.stub.GetSession(pb.GetSessionRequest(session_id=first)))
    assert error.code() == grpc.StatusCode.NOT_FOUND and "evicted" in error.details()
    assert _details(error)["ErrorInfo"].reason == "SESSION_EVICTED"
    client.close_session(second)
    error = rpc_failure(lambda: client.stub.GetSession(pb.GetSessionRequest(session_id=second)))
    assert _details(error)["ErrorInfo"].reason == "SESSION_CLOSED"


def test_aborted_says_what_holds_the_session(client: Client, frames: np.ndarray) -> None:
    # Long enough that the propagation still holds the session after the registry's lock wait (2 s): the server
    # streams ahead of the client, so a short study would be done by then.
    sid = client.create_session(np.repeat(frames, 8, axis=0), preset="none").session_id
    client.add_box(sid, 1, 0, (5, 5, 30, 30))
    stream = client.propagate(sid)
    next(stream)
    error = rpc_failure(lambda: client.add_box(sid, 2, 1, (5, 5, 30, 30)))
    assert error.code() == grpc.StatusCode.ABORTED
    assert "Propagate has held it for" in error.details()
    assert _details(error)["ErrorInfo"].reason == "SESSION_BUSY"
    stream.cancel()  # the rest of the propagation is not the point (it is most of this study's slices)
    client.close_session(sid)


def test_unary_errors_log_no_serialization_traceback(client: Client, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for _ in range(3):
        rpc_failure(lambda: client.stub.GetSession(pb.GetSessionRequest(session_id="nope")))
        rpc_failure(lambda: client.stub.CloseSession(pb.CloseSessionRequest(session_id="s" * 500)))
    time.sleep(0.2)
    noisy = [r for r in caplog.records if "serializ" in r.getMessage().lower() or r.exc_info]
    assert not noisy, [r.getMessage() for r in noisy]


def _count(method: str, code: str) -> float:
    return REGISTRY.get_sample_value("medsam2_rpc_requests_total", {"method": method, "code": code}) or 0.0


def test_a_disconnect_mid_upload_counts_as_cancelled(server) -> None:
    _, target = server
    before = {code: _count("CreateSession", code) for code in ("CANCELLED", "INTERNAL")}
    sent = threading.Event()

    def requests():
        yield pb.CreateSessionRequest(header=pb.StudyHeader(shape=[4, 64, 64], dtype=pb.DATA_TYPE_UINT8))
        yield pb.CreateSessionRequest(voxels=b"\0" * 1000)
        sent.set()
        time.sleep(30)  # the client goes away before sending the rest

    c = Client(target)
    future = c.stub.CreateSession.future(requests())
    assert sent.wait(10)
    time.sleep(0.3)
    future.cancel()
    c.close()
    deadline = time.monotonic() + 10
    while _count("CreateSession", "CANCELLED") == before["CANCELLED"]:
        assert time.monotonic() < deadline, "the disconnect was not counted as CANCELLED"
        time.sleep(0.1)
    assert _count("CreateSession", "INTERNAL") == before["INTERNAL"]


def test_rich_status_of_domain_errors() -> None:
    status = rich_status(grpc.StatusCode.INVALID_ARGUMENT, "bad", InvalidInput("bad", field="header.shape"))
    info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    status.details[0].Unpack(info)
    status.details[1].Unpack(bad)
    assert (info.reason, info.domain, bad.field_violations[0].field) == ("INVALID_INPUT", "medsam2", "header.shape")
    status = rich_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "full", CapacityExceeded("full", retry_after_s=2.5))
    retry = error_details_pb2.RetryInfo()
    status.details[1].Unpack(retry)
    assert (retry.retry_delay.seconds, retry.retry_delay.nanos) == (2, 500_000_000)
    internal = rich_status(grpc.StatusCode.INTERNAL, "internal error", RuntimeError("secret path /x"))
    assert "secret" not in str(internal)


def test_domain_errors_keep_plain_raises_working() -> None:
    assert str(InvalidInput("a")) == "a" and InvalidInput("a").field == ""
    assert SessionEvicted("gone").reason == "SESSION_EVICTED"
    assert SessionEvicted("gone", reason="SESSION_EXPIRED").reason == "SESSION_EXPIRED"
    error = OutputNotWritable("cannot write", field="out")
    assert isinstance(error, OSError) and isinstance(error, Medsam2Error) and error.field == "out"
