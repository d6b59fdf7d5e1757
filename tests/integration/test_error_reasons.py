"""The reason catalogue, walked over gRPC: for each reason, one real request that triggers it.

Each error must carry the catalogue's status and reason, a BadRequest field for every INVALID_ARGUMENT, and
RetryInfo exactly where the catalogue says a retry can help. Reasons that need infrastructure this module does not
start (a PACS that answers, a versioned repository, a session store, a stalled upload) are listed with the test that
triggers them, so the walk covers the whole catalogue.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest

from medsam2.api.client import Client, ServiceError
from medsam2.api.pb.medsam2.v1 import segmentation_pb2 as pb
from medsam2.backends.onnxruntime_backend import OnnxRuntimeBackend
from medsam2.errors import REASON_BY_NAME, REASONS
from medsam2.server.app import start_server
from medsam2.server.config import ServerSettings
from medsam2.server.status import status_for
from medsam2_export.parity import synthetic_volume

SLICES, ROWS, COLS = 3, 32, 40
UNREACHABLE = "http://127.0.0.1:9/dicom-web"  # the discard port: connections are refused
BOX = (4.0, 4.0, 24.0, 24.0)

ELSEWHERE = {
    # Triggered by other tests (the reason or its error type, as named there):
    "MODEL_VERSION_NOT_FOUND": "test_model_versions.py (a versioned model repository)",
    "SESSION_EXPIRED": "test_error_details.py",
    "STATE_LIMIT": "test_hostile_clients.py",
    "BACKEND_UNAVAILABLE": "test_cli.py",
    "PACS_ACCESS_DENIED": "test_pacs_orthanc.py (PacsAccessDenied)",
    "NOT_FOUND": "test_pacs_orthanc.py (a study or series not on PACS)",
    "UPLOAD_TIMED_OUT": "test_hostile_clients.py (DEADLINE_EXCEEDED of a stalled upload)",
    # The PACS boundary, against a hostile DICOMweb server:
    **{
        reason: "test_hostile_pacs.py"
        for reason in (
            "PACS_BUDGET_EXCEEDED",
            "PACS_TOO_MANY_PAGES",
            "PACS_WRONG_STUDY",
            "PACS_INCONSISTENT_SERIES",
            "PACS_BAD_RESPONSE",
            "PACS_TRANSFER_BROKEN",
            "PACS_DEADLINE_EXCEEDED",
            "PACS_FETCHES_FULL",
            "INVALID_UID",
        )
    },
    "PACS_WRONG_SERIES": "tests/unit/test_pacs_bounds.py",
    "PACS_UNLISTED_INSTANCE": "tests/unit/test_pacs_bounds.py",
    "PACS_INCOMPLETE_SERIES": "tests/unit/test_pacs_bounds.py",
    "PACS_TOO_MANY_RESULTS": "not triggered yet: needs a PACS listing more instances than a study may hold",
    "PACS_MISMATCH": "the type's default: every check names a finer reason",
    "TIMED_OUT": "the type's default: uploads and PACS fetches name finer reasons",
    # The drain and retries:
    "SERVER_SHUTTING_DOWN": "test_drain.py",
    "REQUEST_ID_REUSED": "test_server_results.py, tests/unit/test_journal_failures.py",
    # The HTTP gateway's own refusals (REST only):
    "GATEWAY_BUSY": "test_gateway_edges.py",
    **{
        reason: "test_gateway_edges.py and test_gateway.py check these refusals by HTTP status, not yet by reason"
        for reason in (
            "MALFORMED_REQUEST",
            "UNSUPPORTED_MEDIA_TYPE",
            "BODY_TOO_LARGE",
            "NO_SUCH_PATH",
            "NO_SUCH_METHOD",
        )
    },
    "NOT_BUILT": "not triggered yet: needs a gateway without its web bundle",
    # Triggered by the unit tier's servicer tests (FakeBackend), or not by any request test yet, and why:
    "DICOM_SOURCE_MISMATCH": "needs a PACS holding a series that differs from the upload",
    "MODEL_VERSION_UNAVAILABLE": "needs a session store and a replica without the session's version",
    "PRECONDITION_FAILED": "the type's default: every service raise names a finer reason",
    "CAPACITY_EXCEEDED": "the type's default: every service raise names a finer reason",
    "CHECKPOINT_ERROR": "raised at start-up and by the CLI, never by a request",
    "CONFIG_ERROR": "raised at start-up, never by a request",
    "OUTPUT_NOT_WRITABLE": "raised by the CLI's outputs, never by a request",
    "SERVICE_FULL": "tests/unit/test_servicer_tenancy.py (every session busy at once)",
    "PRINCIPAL_QUOTA": "tests/unit/test_servicer_errors.py (every session of the principal busy at once)",
    "UPLOADS_FULL": "tests/unit/test_servicer_errors.py (more concurrent uploads than the cap)",
    "STORE_UNAVAILABLE": "tests/unit/test_servicer_errors.py and test_servicer_replay.py (a store that refuses)",
    "PACS_REJECTED": "needs a PACS that refuses a STOW-RS",
    "CLIENT_CANCELLED": "the client left, so it never reads the status",
}


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return synthetic_volume(seed=5, slices=SLICES, height=ROWS, width=COLS)[0]


def _start(graphs: dict[str, Path], environ: dict[str, str], **settings):
    return start_server(
        ServerSettings(port=0, metrics_port=0, model_repository=graphs["present"], **settings),
        OnnxRuntimeBackend(graphs["present"], threads=1),
        environ=environ,
    )


@pytest.fixture(scope="module")
def full(graphs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """A server with a (down) PACS endpoint, a tiny annotation store, tokens and an admin."""
    folder = tmp_path_factory.mktemp("reasons")
    tokens = folder / "tokens"
    tokens.write_text("alice:alice-secret\nroot:root-secret\n")
    running = _start(
        graphs,
        {"MEDSAM2_PACS_DOWN_URL": UNREACHABLE, "MEDSAM2_PACS_DOWN_TIMEOUT_S": "2"},
        auth_tokens=tokens,
        admin_principals="root",
        annotations_dir=folder / "store",
        annotations_max_bytes=1,
    )
    target = f"127.0.0.1:{running.port}"
    clients = {name: Client(target, token=f"{name}-secret") for name in ("alice", "root")}
    clients["stranger"] = Client(target, token="wrong")
    yield clients
    for c in clients.values():
        c.close()
    running.stop(1)


@pytest.fixture(scope="module")
def bare(graphs: dict[str, Path]):
    """A server without PACS or annotation store, holding one session at most."""
    running = _start(graphs, {}, max_sessions=1, max_study_voxels=SLICES * 512 * 512 * 40)
    client = Client(f"127.0.0.1:{running.port}")
    yield client
    client.close()
    running.stop(1)


def _fails(call: Callable[[], object]) -> ServiceError:
    with pytest.raises(ServiceError) as info:
        result = call()
        if hasattr(result, "__iter__") and not hasattr(result, "ListFields"):
            list(result)
    return info.value


def _check(name: str, error: ServiceError) -> None:
    reason = REASON_BY_NAME[name]
    assert (error.reason, error.code()) == (name, status_for(reason.error)), (name, error)
    if error.code() is grpc.StatusCode.INVALID_ARGUMENT:
        assert error.field, f"{name}: INVALID_ARGUMENT without a BadRequest field"
    if error.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE):
        assert (error.retry_after_s is not None) == reason.retry, name
    else:
        assert error.retry_after_s is None, name


def test_every_reason_is_triggered_by_a_request(full, bare, frames: np.ndarray) -> None:
    alice, root, stranger = full["alice"], full["root"], full["stranger"]
    walked: dict[str, ServiceError] = {}

    def walk(name: str, call: Callable[[], object]) -> None:
        walked[name] = _fails(call)
        _check(name, walked[name])

    sid = alice.create_session(frames, preset="none").session_id
    walk("INVALID_INPUT", lambda: alice.result(sid, 9))
    assert walked["INVALID_INPUT"].field == "format"
    walk("INVALID_PROMPT", lambda: alice.add_box(sid, 1, 0, (0, 0, COLS + 5, 10)))
    assert walked["INVALID_PROMPT"].field == "box"
    nan = _fails(lambda: alice.add_box(sid, 1, 0, (float("nan"), 0, 10, 10)))
    assert nan.field == "box" and "(nan, 0, 10, 10)" in nan.details() and "np.float64" not in nan.details()

    def truncated() -> object:
        header = pb.StudyHeader(shape=[SLICES, ROWS, COLS], dtype=pb.DATA_TYPE_UINT8)
        parts = iter([pb.CreateSessionRequest(header=header), pb.CreateSessionRequest(voxels=b"\0" * 10)])
        return alice.stub.CreateSession(parts, metadata=alice.metadata)

    walk("UPLOAD_TRUNCATED", lambda: _typed(truncated))
    walk("NO_PROMPTS", lambda: alice.propagate(sid))
    alice.add_box(sid, 1, 1, BOX)
    walk("NOT_PROPAGATED", lambda: alice.add_prompt(sid, 1, 2, points=[(10, 10, True)], correction=True))
    walk("OBJECT_NOT_FOUND", lambda: alice.reset_objects(sid, [7]))
    walk("IMAGE_NOT_KEPT", lambda: alice.image(sid))
    walk("NO_DICOM_SOURCE", lambda: alice.result(sid, pb.RESULT_FORMAT_DICOM_SEG))
    alice.save_annotation(sid)  # the store's cap (1 byte) is checked before a save: the first fills the folder
    walk("ANNOTATION_QUOTA", lambda: alice.save_annotation(sid))
    identity = {"study_uid": "1.2", "series_uid": "1.2.3", "sop_instance_uids": [f"1.2.3.{k}" for k in range(SLICES)]}
    named = alice.create_session(frames, preset="none", identity=identity).session_id
    alice.add_box(named, 1, 1, BOX)
    walk("DICOM_HEADERS_MISSING", lambda: alice.result(named, pb.RESULT_FORMAT_DICOM_SEG))
    empty = alice.create_session(frames, preset="none").session_id
    walk("NO_MASKS", lambda: alice.save_annotation(empty))
    walk("PACS_ENDPOINT_NOT_FOUND", lambda: alice.store_result(sid, "nope"))
    assert walked["PACS_ENDPOINT_NOT_FOUND"].field == "endpoint"
    walk("PACS_UNAVAILABLE", lambda: alice.open_pacs("down", "1.2.3"))
    walk("MODEL_NOT_VERSIONED", lambda: root.set_model_version(2))
    walk("PERMISSION_DENIED", lambda: alice.set_model_version(2))
    walk("UNAUTHENTICATED", lambda: stranger.list_sessions())
    walk("SESSION_NOT_FOUND", lambda: alice.get_session("never-was"))
    for s in (sid, named, empty):
        alice.close_session(s)
    walk("SESSION_CLOSED", lambda: alice.get_session(sid))
    walk("STUDY_TOO_LARGE", lambda: _too_large(alice))

    # The bare server: no PACS, no annotation store, one session at most.
    walk("PACS_NOT_CONFIGURED", lambda: bare.open_pacs("any", "1.2.3"))
    walk("ANNOTATION_STORE_DISABLED", lambda: bare.save_annotation("any"))
    first = bare.create_session(frames, preset="none").session_id
    second = bare.create_session(np.repeat(frames, 12, axis=0), preset="none").session_id  # evicts the idle first
    walk("SESSION_EVICTED", lambda: bare.get_session(first))
    bare.add_box(second, 1, 0, BOX)
    stream = bare.propagate(second)
    next(stream)  # the propagation holds the session for longer than the lock wait (36 slices)
    started = time.monotonic()
    walk("SESSION_BUSY", lambda: bare.add_box(second, 2, 1, BOX))
    assert time.monotonic() - started < 60
    list(stream)
    bare.close_session(second)

    missing = {r.name for r in REASONS} - set(walked) - set(ELSEWHERE)
    assert not missing, f"reasons neither walked here nor listed with where they are tested: {sorted(missing)}"
    assert not set(walked) & set(ELSEWHERE), "a reason both walked and listed elsewhere"


def _typed(call: Callable[[], object]) -> object:
    """A raw stub call whose grpc error becomes the client's ServiceError."""
    try:
        return call()
    except grpc.RpcError as exc:
        raise ServiceError.from_rpc_error(exc) from exc


def _too_large(client: Client) -> object:
    header = pb.StudyHeader(shape=[4096, 4096, 4096], dtype=pb.DATA_TYPE_UINT8)
    return _typed(
        lambda: client.stub.CreateSession(iter([pb.CreateSessionRequest(header=header)]), metadata=client.metadata)
    )
