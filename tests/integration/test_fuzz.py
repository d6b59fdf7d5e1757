"""Property-based tests (hypothesis) of the proto surface and of the readers, with a bounded budget.

Whatever bytes or field values arrive, the answer is a domain error (a clear gRPC status, never INTERNAL or
UNKNOWN) or a valid result. ``MEDSAM2_FUZZ_EXAMPLES`` sets the examples per property (default 30).
"""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medsam2.api.client import Client
from medsam2.api.pb.medsam2.v1 import segmentation_pb2 as pb
from medsam2.backends.onnxruntime_backend import OnnxRuntimeBackend
from medsam2.errors import InvalidInput, Medsam2Error
from medsam2.io.volumes import read_volume
from medsam2.server.app import start_server
from medsam2.server.config import ServerSettings
from medsam2.server.request_checks import check_request

EXAMPLES = int(os.environ.get("MEDSAM2_FUZZ_EXAMPLES", "30"))
BUDGET = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# What a client may legitimately get back for a bad request; INTERNAL and UNKNOWN never.
CLEAR_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.OUT_OF_RANGE,
}
REQUEST_TYPES = [
    pb.CreateSessionRequest,
    pb.GetSessionRequest,
    pb.ListSessionsRequest,
    pb.CloseSessionRequest,
    pb.AddPromptRequest,
    pb.PropagateRequest,
    pb.GetResultRequest,
    pb.ResetObjectsRequest,
]
ROWS, COLS = 24, 32

floats = st.floats(allow_nan=True, allow_infinity=True, width=32)
uints = st.integers(min_value=0, max_value=2**32 - 1)


# -- the surface check alone, on arbitrary bytes ------------------------------------------------------------------
@BUDGET
@given(kind=st.sampled_from(REQUEST_TYPES), data=st.binary(max_size=512))
def test_any_decodable_request_is_checked_without_surprises(kind, data: bytes) -> None:
    try:
        message = kind.FromString(data)
    except Exception:
        return
    try:
        check_request(message)
    except InvalidInput as exc:
        assert exc.field, "an INVALID_ARGUMENT from the surface check names its field"


# -- the live service ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def service(graphs: dict[str, Path]):
    settings_ = ServerSettings(
        port=0,
        metrics_port=0,
        health_port=-1,
        model_repository=graphs["present"],
        max_sessions=64,
        max_study_voxels=64 * 512 * 512,
    )
    running = start_server(settings_, OnnxRuntimeBackend(graphs["present"], threads=2))
    client = Client(f"127.0.0.1:{running.port}")
    frames = np.random.default_rng(0).integers(0, 255, (3, ROWS, COLS), dtype=np.uint8)
    sid = client.create_session(frames, preset="none").session_id
    yield client, sid
    client.close()
    running.stop(1)


def _call(fn) -> grpc.StatusCode:
    try:
        result = fn()
        if hasattr(result, "__iter__") and not hasattr(result, "ListFields"):
            list(result)
    except grpc.RpcError as exc:
        assert exc.code() in CLEAR_CODES, f"{exc.code()}: {exc.details()}"
        return exc.code()
    return grpc.StatusCode.OK


headers = st.builds(
    pb.StudyHeader,
    shape=st.lists(st.one_of(st.integers(0, 40), st.integers(0, 2**32 - 1)), max_size=4),
    dtype=st.integers(0, 9),
    spacing_mm=st.lists(floats, max_size=4),
    kind=st.integers(0, 5),
    label=st.text(max_size=300),
    preprocessing=st.builds(
        pb.Preprocessing,
        preset=st.sampled_from(["", "none", "auto", "brain", "zzz"]),
        window_width=floats,
        window_level=floats,
    ),
)


@BUDGET
@given(header=headers, chunks=st.lists(st.binary(max_size=4096), max_size=3))
def test_create_session_with_any_header_and_chunks(service, header: pb.StudyHeader, chunks: list[bytes]) -> None:
    client, _ = service
    messages = [pb.CreateSessionRequest(header=header)] + [pb.CreateSessionRequest(voxels=c) for c in chunks]
    try:
        session = client.stub.CreateSession(iter(messages), timeout=60)
    except grpc.RpcError as exc:
        assert exc.code() in CLEAR_CODES, f"{exc.code()}: {exc.details()}"
        return
    client.close_session(session.session_id)


masks = st.builds(
    pb.Mask,
    rows=st.one_of(st.just(ROWS), st.integers(0, 2**16)),
    columns=st.one_of(st.just(COLS), st.integers(0, 2**16)),
    encoding=st.integers(0, 4),
    data=st.binary(max_size=4 * ROWS * COLS),
)


@BUDGET
@given(
    object_id=uints,
    slice_=uints,
    box=st.one_of(st.none(), st.builds(pb.Box, x0=floats, y0=floats, x1=floats, y1=floats)),
    points=st.lists(st.builds(pb.Point, x=floats, y=floats, positive=st.booleans()), max_size=20),
    mask=st.one_of(st.none(), masks),
    session=st.sampled_from(["ours", "", "unknown"]),
)
def test_add_prompt_with_any_fields(service, object_id: int, slice_: int, box, points, mask, session: str) -> None:
    client, sid = service
    request = pb.AddPromptRequest(
        session_id={"ours": sid, "": "", "unknown": "f" * 32}[session], object_id=object_id, slice=slice_, points=points
    )
    if box is not None:
        request.box.CopyFrom(box)
    if mask is not None:
        request.mask.CopyFrom(mask)
    _call(lambda: client.stub.AddPrompt(request, timeout=60))


@BUDGET
@given(
    fmt=st.integers(-1, 6),
    chunk_bytes=st.integers(0, 2**31 - 1),
    propagate=st.builds(
        pb.PropagateRequest,
        direction=st.integers(-1, 5),
        protocol=st.integers(-1, 5),
        encoding=st.integers(-1, 4),
        first_slice=st.integers(0, 2**32 - 1),
        last_slice=st.integers(0, 2**32 - 1),
    ),
    object_ids=st.lists(uints, max_size=5),
)
def test_result_propagate_and_reset_with_any_fields(
    service,
    fmt: int,
    chunk_bytes: int,
    propagate,
    object_ids: list[int],
) -> None:
    client, sid = service
    _call(
        lambda: client.stub.GetResult(
            pb.GetResultRequest(session_id=sid, format=fmt, chunk_bytes=chunk_bytes), timeout=60
        )
    )
    client.stub.ResetObjects(pb.ResetObjectsRequest(session_id=sid, all=True))  # propagation has nothing to track
    propagate.session_id = sid
    _call(lambda: client.stub.Propagate(propagate, timeout=60))
    _call(lambda: client.stub.ResetObjects(pb.ResetObjectsRequest(session_id=sid, object_ids=object_ids), timeout=60))


# -- readers: DICOM, NIfTI and npz bytes --------------------------------------------------------------------------
def _pydicom_file(name: str) -> bytes:
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file(name)).read_bytes()


def _nifti_file() -> bytes:
    import nibabel

    return (Path(nibabel.__file__).parent / "tests" / "data" / "anatomical.nii").read_bytes()


def _npz_file() -> bytes:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, imgs=np.arange(2 * 8 * 8, dtype=np.int16).reshape(2, 8, 8), spacing=np.array([2.0, 1.0, 1.0]))
    return buffer.getvalue()


SEEDS = {".dcm": lambda: _pydicom_file("CT_small.dcm"), ".nii": _nifti_file, ".npz": _npz_file}


def _mutate(seed: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    data = bytearray(seed)
    for position, value in edits:
        data[position % len(data)] = value
    return bytes(data[:cut] if cut is not None else data)


@BUDGET
@given(
    suffix=st.sampled_from(sorted(SEEDS)),
    edits=st.lists(st.tuples(st.integers(0, 2**20), st.integers(0, 255)), max_size=12),
    cut=st.one_of(st.none(), st.integers(0, 4096)),
)
def test_readers_on_mutated_bytes(
    tmp_path_factory: pytest.TempPathFactory, suffix: str, edits: list[tuple[int, int]], cut: int | None
) -> None:
    path = tmp_path_factory.mktemp("fuzz") / f"input{suffix}"
    path.write_bytes(_mutate(SEEDS[suffix](), edits, cut))
    try:
        volume = read_volume(path)
    except Medsam2Error:
        return
    assert volume.voxels.ndim == 3 and len(volume.spacing) == 3
