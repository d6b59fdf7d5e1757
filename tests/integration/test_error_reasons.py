"""The reason catalogue, walked over gRPC and over the REST/SSE gateway of the same servers: for each reason, one real
request that triggers it, sent on both transports.

Each refusal must carry the catalogue's status and reason, a BadRequest field for every INVALID_ARGUMENT, and
RetryInfo exactly where the catalogue says a retry can help. Over REST the body's ``google.rpc.Status`` (HTTP
status, status name, message, every detail) must equal what gRPC said for the same request, and a RetryInfo comes
with its Retry-After. The gateway's own refusals (before a call reaches the servicer) exist over REST only and are
walked there. A stand-in PACS answers each endpoint one wrong way (401, 400, an empty search, HTML), and the hostile
DICOMweb server of hostile_pacs.py lists a series too large to open and holds a series other than an upload that
names it. Reasons that need infrastructure this module does not start (a PACS serving instances that misbehave
mid-transfer, a versioned repository, a session store, a stalled upload, a draining server) are listed with the
test that triggers them, and the rest with why no request can trigger them, so the walk covers the whole
catalogue.

Both transports share the module's two servers and walk in one pass: each step sends its request over gRPC, then
the same request over REST, so the two answers name the same sessions.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import math
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import numpy as np
import pydicom
import pytest
from google.protobuf import json_format
from google.protobuf.message import Message

from hostile_pacs import HostilePacs, HostileStudy, many_instances_study, study_from_folder
from medsam2.api.client import Client
from medsam2.api.pb.medsam2.v1 import segmentation_pb2 as pb
from medsam2.backends.onnxruntime_backend import OnnxRuntimeBackend
from medsam2.errors import REASON_BY_NAME, REASONS
from medsam2.gateway.context import HTTP_STATUS
from medsam2.server.app import RunningServer, start_server
from medsam2.server.config import ServerSettings
from medsam2.server.pacs_fetches import fetch_limits
from medsam2.server.status import status_for
from medsam2.testing.synthetic_ct import write_synthetic_ct
from medsam2_export.parity import synthetic_volume
from rpc_errors import rpc_failure, status_json
from serve_process import free_port

SLICES, ROWS, COLS = 3, 32, 40
UNREACHABLE = "http://127.0.0.1:9/dicom-web"  # the discard port: connections are refused
BOX = (4.0, 4.0, 24.0, 24.0)
MAX_MESSAGE_BYTES = 1 << 20
"""The full server's message limit (gRPC messages, REST bodies), small enough to pass over REST cheaply."""
FULL_MAX_STUDY_VOXELS = 512 * 512 * 64
"""The full server's study limit: 64 slices, so a series too large to list takes few QIDO-RS items."""
QIDO_PAGE_SIZE = 100
"""The hostile endpoint's QIDO-RS page: the too-large series lists in a few valid pages."""
TRANSPORTS = ("grpc", "rest")
SERVICE = pb.DESCRIPTOR.services_by_name["SegmentationService"]

REST_ONLY = {
    # The gateway's own refusals, before a call reaches the servicer: a gRPC client cannot send these requests.
    "MALFORMED_REQUEST",
    "UNSUPPORTED_MEDIA_TYPE",
    "BODY_TOO_LARGE",
    "HEADERS_TOO_LARGE",
    "UNSUPPORTED_PROTOCOL",
    "NO_SUCH_PATH",
    "NO_SUCH_METHOD",
}

ELSEWHERE = {
    # Triggered by other tests (the reason or its error type, as named there):
    "MODEL_VERSION_NOT_FOUND": "test_model_versions.py (a versioned model repository)",
    "SESSION_EXPIRED": "test_error_details.py",
    "STATE_LIMIT": "test_hostile_clients.py",
    "BACKEND_UNAVAILABLE": "test_cli.py",
    "UPLOAD_TIMED_OUT": "test_hostile_clients.py (DEADLINE_EXCEEDED of a stalled upload)",
    # The PACS boundary, against a hostile DICOMweb server:
    **{
        reason: "test_hostile_pacs.py"
        for reason in (
            "PACS_TOO_MANY_PAGES",
            "PACS_WRONG_STUDY",
            "PACS_INCONSISTENT_SERIES",
            "PACS_TRANSFER_BROKEN",
            "PACS_FETCHES_FULL",
            "INVALID_UID",
        )
    },
    **{
        reason: "test_hostile_pacs.py; over REST by test_ohif_gateway.py's DICOMweb proxy"
        for reason in ("PACS_BUDGET_EXCEEDED", "PACS_DEADLINE_EXCEEDED")
    },
    "PACS_WRONG_SERIES": "tests/unit/test_pacs_bounds.py",
    "PACS_UNLISTED_INSTANCE": "tests/unit/test_pacs_bounds.py",
    "PACS_INCOMPLETE_SERIES": "tests/unit/test_pacs_bounds.py",
    "PACS_MISMATCH": "the type's default: every check names a finer reason",
    "TIMED_OUT": "the type's default: uploads and PACS fetches name finer reasons",
    # The drain and retries:
    "SERVER_SHUTTING_DOWN": "test_drain.py",
    "REQUEST_ID_REUSED": "test_server_results.py, tests/unit/test_journal_failures.py",
    # The HTTP gateway's own refusals (REST only):
    "GATEWAY_BUSY": "test_gateway_edges.py",
    "NOT_BUILT": "test_ohif_gateway.py (an unbuilt OHIF; REST only)",
    # A session store and a replica whose repository lacks the session's version (gRPC and REST, same details):
    "MODEL_VERSION_UNAVAILABLE": "test_model_versions.py::"
    "test_a_replica_without_the_session_s_version_refuses_it_on_both_transports",
    # The servicer's own limits and store, in the unit tier:
    "SERVICE_FULL": "tests/unit/test_servicer_tenancy.py (every session busy at once; needs a second principal)",
    "UPLOADS_FULL": "tests/unit/test_servicer_errors.py (more concurrent uploads than the cap)",
    "STORE_UNAVAILABLE": "tests/unit/test_servicer_errors.py and test_servicer_replay.py (a store that refuses)",
    # Defaults and reasons no request can trigger, and why:
    "PRECONDITION_FAILED": "the type's default: every service raise names a finer reason",
    "CAPACITY_EXCEEDED": "the type's default: every service raise names a finer reason",
    "CHECKPOINT_ERROR": "raised at start-up and by the CLI, never by a request",
    "CONFIG_ERROR": "raised at start-up, never by a request",
    "OUTPUT_NOT_WRITABLE": "raised by the CLI's outputs, never by a request",
    "CLIENT_CANCELLED": "the client left, so it never reads the status (counted in metrics: test_error_details.py)",
}


# -- what a refusal said, on either transport ---------------------------------------------------------------------
@dataclass(frozen=True)
class Refusal:
    """A refused request as ``google.rpc.Status`` in proto3 JSON: what the REST body says, and gRPC's equivalent."""

    http: int
    """The HTTP status (over gRPC: the gateway's mapping of the status code)."""
    status: str
    """The gRPC status name."""
    message: str
    details: list[dict]
    retry_after: str | None = field(default=None, compare=False)
    """REST's Retry-After header (gRPC has none; not compared)."""

    def detail(self, kind: str) -> dict | None:
        """The detail of type ``google.rpc.<kind>``, or None."""
        return next((d for d in self.details if d["@type"] == f"type.googleapis.com/google.rpc.{kind}"), None)

    @property
    def reason(self) -> str:
        info = self.detail("ErrorInfo")
        return info["reason"] if info else ""

    @property
    def field(self) -> str:
        bad = self.detail("BadRequest")
        return bad["fieldViolations"][0].get("field", "") if bad and bad.get("fieldViolations") else ""


@dataclass(frozen=True)
class Upload:
    """A CreateSession: its header, then (over REST: as the body) its voxel bytes."""

    header: pb.StudyHeader
    voxels: bytes = b""


@dataclass(frozen=True)
class Caller:
    """One principal on one server: its gRPC client (also for the walk's set-up) and the server's HTTP port."""

    client: Client
    http_port: int

    def over_grpc(self, method: str, request: Message | Upload) -> Refusal:
        call = getattr(self.client.stub, method)
        if isinstance(request, Upload):
            parts = [pb.CreateSessionRequest(header=request.header)]
            parts += [pb.CreateSessionRequest(voxels=request.voxels)] if request.voxels else []
            error = rpc_failure(lambda: call(iter(parts), metadata=self.client.metadata))
        else:
            error = rpc_failure(lambda: call(request, metadata=self.client.metadata))
        status, message, details = status_json(error)
        return Refusal(HTTP_STATUS[error.code()], status, message, details)

    def over_rest(self, method: str, request: Message | Upload) -> Refusal:
        path = f"/v1/{method}"
        if isinstance(request, Upload):
            body = request.voxels
            kind = {"Content-Type": "application/octet-stream", "X-Medsam2-Header": _json(request.header)}
        else:
            body = _json(request).encode()
            kind = {"Content-Type": "application/json"}
            rpc = SERVICE.methods_by_name[method]
            if rpc.server_streaming and "data" in rpc.output_type.fields_by_name:
                path += ":download"  # a file in chunks: the whole file, or the error as a JSON body
        return self.http("POST", path, body, kind)

    def http(self, verb: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> Refusal:
        """Send one HTTP request that must be refused; its error body (or SSE error event) as a Refusal."""
        sent = {**({"Authorization": f"Bearer {self.client.token}"} if self.client.token else {}), **(headers or {})}
        connection = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=120)
        try:
            connection.request(verb, path, body=body, headers=sent)
            response = connection.getresponse()
            data = response.read()
        finally:
            connection.close()
        if response.getheader("Content-Type") == "text/event-stream":
            errors = [payload for kind, payload in _events(data) if kind == "error"]
            assert response.status == 200 and errors, f"{path}: the stream ended without an error event"
            error = errors[0]["error"]
            http_status = error["code"]
        else:
            assert response.getheader("Content-Type") == "application/json", (path, response.status, data[:200])
            error = json.loads(data)["error"]
            http_status = response.status
            assert error["code"] == http_status, (path, error)
        return Refusal(
            http_status, error["status"], error["message"], error.get("details", []), response.getheader("Retry-After")
        )


def _json(message: Message) -> str:
    return json.dumps(json_format.MessageToDict(message))


def _events(data: bytes) -> Iterator[tuple[str, dict]]:
    for block in data.decode().strip().split("\n\n"):
        kind, payload = "message", {}
        for line in block.splitlines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                payload = json.loads(line.removeprefix("data: "))
        yield kind, payload


# -- the servers ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return synthetic_volume(seed=5, slices=SLICES, height=ROWS, width=COLS)[0]


def _start(graphs: dict[str, Path], pacs: dict[str, str], **settings) -> RunningServer:
    return start_server(
        ServerSettings(
            port=0,
            metrics_port=0,
            http_port=free_port(),
            model_repository=graphs["present"],
            pacs_endpoints=tuple(pacs.items()),
            **settings,
        ),
        OnnxRuntimeBackend(graphs["present"], threads=1),
    )


class _Pacs(BaseHTTPRequestHandler):
    """A DICOMweb server that answers every request the same way per endpoint (the path's first part)."""

    ANSWERS = {
        "denied": (401, "application/json", b"{}"),  # the service's credentials are refused
        "empty": (200, "application/dicom+json", b"[]"),  # the study is not there
        "refuses": (400, "application/json", b"{}"),  # a 4xx the client cannot cure
        "html": (200, "text/html", b"<html>a login page</html>"),  # not DICOMweb
    }

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        status, kind, body = self.ANSWERS[self.path.split("/")[1]]
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def pacs() -> Iterator[str]:
    """The stand-in PACS's base URL; endpoint NAME is at URL/NAME."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Pacs)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@dataclass(frozen=True)
class Hostile:
    """The hostile DICOMweb server (hostile_pacs.py) and the studies it holds for the walk."""

    url: str
    many: HostileStudy
    """A series whose valid, paged instance search lists more instances than the full server opens."""
    source: HostileStudy
    """An honest series of SLICES slices of ROWS x COLS, the headers of uploads that name its UIDs."""
    slice_uids: list[str]
    """Its instances in the order of their positions (not of their instance numbers), as an upload names them."""
    geometry: pb.PatientGeometry
    """Where those slices lie, as an upload of it says (a SEG is placed by it)."""


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    folder = tmp_path_factory.mktemp("hostile")
    write_synthetic_ct(folder, slices=SLICES, size=ROWS, seed=7)
    slices = []
    for path in folder.glob("*.dcm"):  # ROWS x COLS, as the walk's uploads
        ds = pydicom.dcmread(path)
        ds.Columns, ds.PixelData = COLS, bytes(ROWS * COLS * 2)
        ds.save_as(path)
        slices.append(ds)
    normal = np.cross(*np.reshape(slices[0].ImageOrientationPatient, (2, 3)))
    slices.sort(key=lambda ds: float(np.dot(normal, ds.ImagePositionPatient)))
    first, second = slices[:2]
    geometry = pb.PatientGeometry(
        origin=first.ImagePositionPatient,
        row_direction=first.ImageOrientationPatient[:3],
        column_direction=first.ImageOrientationPatient[3:],
        slice_step=np.subtract(second.ImagePositionPatient, first.ImagePositionPatient).tolist(),
    )
    # More than list_instances' bound (twice the instances --max-study-voxels admits, plus a page), in pages.
    count = 2 * fetch_limits(FULL_MAX_STUDY_VOXELS).max_instances + QIDO_PAGE_SIZE + 1
    with HostilePacs() as server:
        yield Hostile(
            server.url,
            server.add(many_instances_study(count)),
            server.add(study_from_folder(folder, "honest")),
            [str(ds.SOPInstanceUID) for ds in slices],
            geometry,
        )


@pytest.fixture(scope="module")
def full(
    graphs: dict[str, Path], pacs: str, hostile: Hostile, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Caller]]:
    """A server with PACS endpoints (one down, the others answering badly, one hostile), a tiny annotation store,
    tokens and an admin."""
    folder = tmp_path_factory.mktemp("reasons")
    tokens = folder / "tokens"
    tokens.write_text("alice:alice-secret\nroot:root-secret\n")
    endpoints = {f"MEDSAM2_PACS_{name.upper()}_URL": f"{pacs}/{name}" for name in _Pacs.ANSWERS}
    endpoints |= {"MEDSAM2_PACS_HOSTILE_URL": hostile.url, "MEDSAM2_PACS_HOSTILE_QIDO_PAGE_SIZE": str(QIDO_PAGE_SIZE)}
    running = _start(
        graphs,
        {"MEDSAM2_PACS_DOWN_URL": UNREACHABLE, "MEDSAM2_PACS_DOWN_TIMEOUT_S": "2", **endpoints},
        auth_tokens=tokens,
        admin_principals="root",
        annotations_dir=folder / "store",
        annotations_max_bytes=1,
        max_message_bytes=MAX_MESSAGE_BYTES,
        max_study_voxels=FULL_MAX_STUDY_VOXELS,
    )
    target = f"127.0.0.1:{running.port}"
    tokens_of = {"alice": "alice-secret", "root": "root-secret", "stranger": "wrong"}
    callers = {name: Caller(Client(target, token=token), running.http_port) for name, token in tokens_of.items()}
    yield callers
    for caller in callers.values():
        caller.client.close()
    running.stop(1)


@pytest.fixture(scope="module")
def bare(graphs: dict[str, Path]) -> Iterator[Caller]:
    """A server without PACS, annotation store or tokens, holding one session at most."""
    running = _start(graphs, {}, max_sessions=1, max_study_voxels=SLICES * 512 * 512 * 40)
    caller = Caller(Client(f"127.0.0.1:{running.port}"), running.http_port)
    yield caller
    caller.client.close()
    running.stop(1)


# -- the walk ------------------------------------------------------------------------------------------------------
@dataclass
class Walk:
    refusals: dict[str, dict[str, Refusal]] = field(default_factory=lambda: {t: {} for t in TRANSPORTS})
    """transport -> reason -> what the request that triggers it was told."""
    extra: dict[str, dict[str, Refusal]] = field(default_factory=lambda: {t: {} for t in TRANSPORTS})
    """transport -> label -> refusals checked beyond their reason (a NaN box)."""


def _box(session_id: str, object_id: int, slice_index: int, box: tuple[float, ...]) -> pb.AddPromptRequest:
    x0, y0, x1, y1 = box
    return pb.AddPromptRequest(
        session_id=session_id, object_id=object_id, slice=slice_index, box=pb.Box(x0=x0, y0=y0, x1=x1, y1=y1)
    )


@pytest.fixture(scope="module")
def walked(full: dict[str, Caller], bare: Caller, hostile: Hostile, frames: np.ndarray) -> Walk:
    """Every reason this module triggers, each request sent over gRPC and then over REST."""
    alice, root, stranger = full["alice"], full["root"], full["stranger"]
    walk = Walk()

    def both(caller: Caller, method: str, request: Message | Upload) -> dict[str, Refusal]:
        return {"grpc": caller.over_grpc(method, request), "rest": caller.over_rest(method, request)}

    def step(name: str, caller: Caller, method: str, request: Message | Upload) -> None:
        for transport, refusal in both(caller, method, request).items():
            walk.refusals[transport][name] = refusal

    def rest_only(name: str, verb: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        walk.refusals["rest"][name] = alice.http(verb, path, body, headers)

    a = alice.client
    sid = a.create_session(frames, preset="none").session_id
    step("INVALID_INPUT", alice, "GetResult", pb.GetResultRequest(session_id=sid, format=9))  # type: ignore[arg-type]
    step("INVALID_PROMPT", alice, "AddPrompt", _box(sid, 1, 0, (0, 0, COLS + 5, 10)))
    for transport, refusal in both(alice, "AddPrompt", _box(sid, 1, 0, (float("nan"), 0, 10, 10))).items():
        walk.extra[transport]["nan box"] = refusal
    header = pb.StudyHeader(shape=[SLICES, ROWS, COLS], dtype=pb.DATA_TYPE_UINT8)
    step("UPLOAD_TRUNCATED", alice, "CreateSession", Upload(header, b"\0" * 10))
    step("NO_PROMPTS", alice, "Propagate", pb.PropagateRequest(session_id=sid))
    a.add_box(sid, 1, 1, BOX)
    correction = pb.AddPromptRequest(
        session_id=sid, object_id=1, slice=2, points=[pb.Point(x=10, y=10, positive=True)], correction=True
    )
    step("NOT_PROPAGATED", alice, "AddPrompt", correction)
    step("OBJECT_NOT_FOUND", alice, "ResetObjects", pb.ResetObjectsRequest(session_id=sid, object_ids=[7]))
    step("IMAGE_NOT_KEPT", alice, "GetImage", pb.GetImageRequest(session_id=sid))
    seg = pb.GetResultRequest(session_id=sid, format=pb.RESULT_FORMAT_DICOM_SEG)
    step("NO_DICOM_SOURCE", alice, "GetResult", seg)
    a.save_annotation(sid)  # the store's cap (1 byte) is checked before a save: the first fills the folder
    step("ANNOTATION_QUOTA", alice, "SaveAnnotation", pb.SaveAnnotationRequest(session_id=sid))
    source = hostile.source  # an upload that names its DICOM instances, whose headers only the PACS holds
    identity = {"study_uid": source.study_uid, "series_uid": source.series_uid, "sop_instance_uids": hostile.slice_uids}
    named = a.create_session(frames, preset="none", identity=identity, geometry=hostile.geometry).session_id
    a.add_box(named, 1, 1, BOX)
    named_seg = pb.GetResultRequest(session_id=named, format=pb.RESULT_FORMAT_DICOM_SEG)
    step("DICOM_HEADERS_MISSING", alice, "GetResult", named_seg)
    empty = a.create_session(frames, preset="none").session_id
    step("NO_MASKS", alice, "SaveAnnotation", pb.SaveAnnotationRequest(session_id=empty))
    step("PACS_ENDPOINT_NOT_FOUND", alice, "StoreResult", pb.StoreResultRequest(session_id=sid, endpoint="nope"))
    pacs = pb.StudyHeader(pacs=pb.PacsReference(endpoint="down", study_uid="1.2.3"))
    step("PACS_UNAVAILABLE", alice, "CreateSession", Upload(pacs))
    for name, endpoint in [
        ("PACS_ACCESS_DENIED", "denied"),
        ("NOT_FOUND", "empty"),
        ("PACS_REFUSED", "refuses"),
        ("PACS_BAD_RESPONSE", "html"),
    ]:
        study = pb.StudyHeader(pacs=pb.PacsReference(endpoint=endpoint, study_uid="1.2.3"))
        step(name, alice, "CreateSession", Upload(study))
    many = pb.StudyHeader(pacs=pb.PacsReference(endpoint="hostile", study_uid=hostile.many.study_uid))
    step("PACS_TOO_MANY_RESULTS", alice, "CreateSession", Upload(many))
    # StoreResult reads the named series' headers from the PACS, builds the SEG and SR, and the PACS refuses them.
    step("PACS_REJECTED", alice, "StoreResult", pb.StoreResultRequest(session_id=named, endpoint="hostile"))
    # The same UIDs on an upload of other slices: the PACS's headers do not describe its voxels.
    other = a.create_session(frames[:, :16, :16], preset="none", identity=identity).session_id
    store = pb.StoreResultRequest(session_id=other, endpoint="hostile")
    step("DICOM_SOURCE_MISMATCH", alice, "StoreResult", store)
    step("MODEL_NOT_VERSIONED", root, "SetModelVersion", pb.SetModelVersionRequest(version=2))
    step("PERMISSION_DENIED", alice, "SetModelVersion", pb.SetModelVersionRequest(version=2))
    step("UNAUTHENTICATED", stranger, "ListSessions", pb.ListSessionsRequest())
    step("SESSION_NOT_FOUND", alice, "GetSession", pb.GetSessionRequest(session_id="never-was"))
    for s in (sid, named, empty, other):
        a.close_session(s)
    step("SESSION_CLOSED", alice, "GetSession", pb.GetSessionRequest(session_id=sid))
    huge = pb.StudyHeader(shape=[4096, 4096, 4096], dtype=pb.DATA_TYPE_UINT8)
    step("STUDY_TOO_LARGE", alice, "CreateSession", Upload(huge))

    # The gateway's own refusals (REST only), as alice.
    rest_only("NO_SUCH_PATH", "GET", "/nowhere")
    rest_only("NO_SUCH_METHOD", "POST", "/v1/NoSuchMethod", b"{}", {"Content-Type": "application/json"})
    rest_only("UNSUPPORTED_MEDIA_TYPE", "POST", "/v1/GetSession", b"{}", {"Content-Type": "text/plain"})
    rest_only("MALFORMED_REQUEST", "POST", "/v1/GetSession", b"{", {"Content-Type": "application/json"})
    too_large = b" " * (MAX_MESSAGE_BYTES + 1)
    rest_only("BODY_TOO_LARGE", "POST", "/v1/GetSession", too_large, {"Content-Type": "application/json"})
    big_header = {"Content-Type": "application/json", "X-Medsam2-Header": "x" * 70_000}  # past 64 KiB a line
    rest_only("HEADERS_TOO_LARGE", "POST", "/v1/GetSession", b"{}", big_header)
    rest_only("UNSUPPORTED_PROTOCOL", "PUT", "/v1/GetSession", b"{}", {"Content-Type": "application/json"})

    # The bare server: no PACS, no annotation store, one session at most.
    b = bare.client
    step("PACS_NOT_CONFIGURED", bare, "CreateSession", Upload(pb.StudyHeader(pacs=pb.PacsReference(endpoint="any"))))
    step("ANNOTATION_STORE_DISABLED", bare, "SaveAnnotation", pb.SaveAnnotationRequest(session_id="any"))
    first = b.create_session(frames, preset="none").session_id
    second = b.create_session(np.repeat(frames, 12, axis=0), preset="none").session_id  # evicts the idle first
    step("SESSION_EVICTED", bare, "GetSession", pb.GetSessionRequest(session_id=first))
    b.add_box(second, 1, 0, BOX)
    stream = b.propagate(second)
    next(stream)  # the propagation holds the session for longer than two lock waits (36 slices)
    started = time.monotonic()
    step("SESSION_BUSY", bare, "AddPrompt", _box(second, 2, 1, BOX))
    assert time.monotonic() - started < 120
    # The one session the server may hold is busy, so a new one cannot evict it (the caller's own quota, as
    # large as the server's, is met first).
    small = pb.StudyHeader(shape=[SLICES, ROWS, COLS], dtype=pb.DATA_TYPE_UINT8)
    step("PRINCIPAL_QUOTA", bare, "CreateSession", Upload(small, frames.astype(np.uint8).tobytes()))
    stream.cancel()  # the rest of the propagation proves nothing here
    b.close_session(second)
    return walk


def _check(name: str, refusal: Refusal, transport: str) -> None:
    """The catalogue's status, reason and details; over REST, Retry-After with every RetryInfo."""
    reason = REASON_BY_NAME[name]
    code = status_for(reason.error)
    assert (refusal.reason, refusal.status) == (name, code.name), (name, refusal)
    info = refusal.detail("ErrorInfo")
    assert info is not None and info["domain"] == "medsam2", (name, refusal)
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        assert refusal.field, f"{name}: INVALID_ARGUMENT without a BadRequest field"
        assert info.get("metadata", {}).get("field") == refusal.field, (name, refusal)
    retry = refusal.detail("RetryInfo")
    if code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE):
        assert (retry is not None) == reason.retry, name
    else:
        assert retry is None, name
    if transport == "rest":
        assert (refusal.retry_after is not None) == (retry is not None), (name, refusal)
        if retry is not None:
            assert refusal.retry_after is not None
            assert int(refusal.retry_after) == max(1, math.ceil(float(retry["retryDelay"].removesuffix("s"))))


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_every_reason_is_triggered_by_a_request(walked: Walk, transport: str) -> None:
    refusals = walked.refusals[transport]
    for name, refusal in refusals.items():
        _check(name, refusal, transport)
        if name not in REST_ONLY:
            code = status_for(REASON_BY_NAME[name].error)
            assert refusal.http == HTTP_STATUS[code], (name, refusal)
    assert refusals["INVALID_INPUT"].field == "format"
    assert refusals["INVALID_PROMPT"].field == "box"
    assert refusals["PACS_ENDPOINT_NOT_FOUND"].detail("ErrorInfo")["metadata"] == {"field": "endpoint"}  # type: ignore[index]
    nan = walked.extra[transport]["nan box"]
    assert nan.field == "box" and "(nan, 0, 10, 10)" in nan.message and "np.float64" not in nan.message

    others = REST_ONLY if transport == "grpc" else set()
    missing = {r.name for r in REASONS} - set(refusals) - set(ELSEWHERE) - others
    assert not missing, f"reasons neither walked here nor listed with where they are tested: {sorted(missing)}"
    assert not set(refusals) & set(ELSEWHERE), "a reason both walked and listed elsewhere"
    untested = {
        name: where
        for name, where in ELSEWHERE.items()
        if "test_" not in where and not where.startswith(("the type's default", "raised "))
    }
    assert not untested, f"listed elsewhere, but no test named that triggers them: {untested}"


def _timeless(refusal: Refusal) -> Refusal:
    """The refusal with the live figures its message reports blanked.

    How long a propagation held a session, and how many bytes a session holds while a propagation adds its
    masks (PRINCIPAL_QUOTA is asked mid-propagation), depend on when the request arrived, not on the transport.
    """
    message = re.sub(r"\b\d+(\.\d+)? s\b", "<duration> s", refusal.message)
    message = re.sub(r"\bholding \d+ bytes\b", "holding <size> bytes", message)
    return dataclasses.replace(refusal, message=message)


def test_rest_says_what_grpc_says_for_the_same_request(walked: Walk) -> None:
    """The same status, HTTP status, message and details (ErrorInfo, BadRequest, RetryInfo) on both transports."""
    over_grpc, over_rest = walked.refusals["grpc"], walked.refusals["rest"]
    assert set(over_rest) - set(over_grpc) == REST_ONLY
    for name, refusal in over_grpc.items():
        assert _timeless(over_rest[name]) == _timeless(refusal), name
    assert walked.extra["rest"] == walked.extra["grpc"]


def test_the_gateway_s_own_refusals_keep_their_http_status(walked: Walk) -> None:
    """REST only: the HTTP status says what HTTP says (415, 413, 431, 501), the details the catalogue's reason."""
    statuses = {name: walked.refusals["rest"][name].http for name in REST_ONLY}
    assert statuses == {
        "NO_SUCH_PATH": 404,
        "NO_SUCH_METHOD": 404,
        "UNSUPPORTED_MEDIA_TYPE": 415,
        "MALFORMED_REQUEST": 400,
        "BODY_TOO_LARGE": 413,
        "HEADERS_TOO_LARGE": 431,
        "UNSUPPORTED_PROTOCOL": 501,
    }
