"""The servicer behind a real gRPC server on loopback, on the FakeBackend: what a gRPC client actually receives.

The other unit tests call the servicer's methods directly; these check the wire: tokens checked by the server's
interceptor before any handler, google.rpc details in the trailers (decoded by ``grpc_status`` and by our
``Client``'s ``ServiceError``), streams that end with a status, and no "Exception serializing message!" noise.
"""

from __future__ import annotations

import gzip
import logging
from collections.abc import Iterator
from concurrent import futures

import grpc
import nibabel as nib
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from servicer_calls import SIDE, SLICES, TOKENS, FlakyStore, make_servicer, volume

from medsam2.api.client import Client, ServiceError
from medsam2.api.pb.medsam2.v1 import segmentation_pb2 as pb
from medsam2.api.pb.medsam2.v1 import segmentation_pb2_grpc as pb_grpc
from medsam2.server.app import AuthInterceptor
from medsam2.server.servicer import SegmentationServicer


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, SegmentationServicer, FlakyStore]]:
    store = FlakyStore()
    servicer = make_servicer(store, tmp_path_factory.mktemp("grpc"))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), interceptors=[AuthInterceptor(servicer.auth)])
    pb_grpc.add_SegmentationServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", servicer, store
    server.stop(0)


@pytest.fixture()
def alice(served) -> Iterator[Client]:
    client = Client(served[0], token=TOKENS["alice"])
    yield client
    client.close()


def _failure(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        result = call()
        if hasattr(result, "__iter__") and not hasattr(result, "ListFields"):
            list(result)
    return info.value


def _details(error: grpc.RpcError) -> dict[str, object]:
    status = rpc_status.from_call(error)
    assert status is not None, "the status carries no google.rpc details"
    assert status.code == error.code().value[0] and status.message == error.details()
    found: dict[str, object] = {}
    for detail in status.details:
        for kind in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest, error_details_pb2.RetryInfo):
            if detail.Is(kind.DESCRIPTOR):
                found[kind.__name__] = kind()
                detail.Unpack(found[kind.__name__])
    return found


def test_a_session_works_end_to_end_over_grpc(alice: Client) -> None:
    voxels = volume(3)
    session = alice.create_session(voxels, preset="none")
    assert list(session.shape) == [SLICES, SIDE, SIDE] and session.durable
    reply = alice.add_box(session.session_id, 1, 2, (8, 8, 40, 40))
    assert reply.slice == 2 and [o.object_id for o in reply.objects] == [1]
    streamed = list(alice.propagate(session.session_id))
    assert sorted({r.slice for r in streamed}) == list(range(SLICES))
    labels, ids = alice.result_labels(session.session_id)
    assert labels.shape == voxels.shape and ids == [1] and labels[2].any()
    assert alice.close_session(session.session_id) is True


def test_an_unknown_token_is_refused_by_the_interceptor_before_any_handler(served) -> None:
    target, servicer, _ = served
    stranger = Client(target, token="wrong")
    try:
        before = len(servicer.registry.list(principal="alice"))
        error = _failure(lambda: stranger.create_session(volume(), preset="none"))
        assert error.code() is grpc.StatusCode.UNAUTHENTICATED
        assert len(servicer.registry.list(principal="alice")) == before
    finally:
        stranger.close()


def test_invalid_argument_reaches_the_client_with_error_info_and_bad_request(alice: Client) -> None:
    error = _failure(
        lambda: alice.stub.Propagate(pb.PropagateRequest(session_id="x", direction=17), metadata=alice.metadata)
    )
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    details = _details(error)
    assert (details["ErrorInfo"].domain, details["ErrorInfo"].reason) == ("medsam2", "INVALID_INPUT")
    violation = details["BadRequest"].field_violations[0]
    assert violation.field == "direction" and "unknown value 17" in violation.description
    assert "RetryInfo" not in details
    typed = ServiceError.from_rpc_error(error)
    assert (typed.reason, typed.field, typed.retry_after_s) == ("INVALID_INPUT", "direction", None)


def test_a_failed_store_reaches_the_client_as_unavailable_with_retry_info(served, alice: Client) -> None:
    _, _, store = served
    sid = alice.create_session(volume(), preset="none").session_id
    store.failures = 1
    error = _failure(
        lambda: alice.stub.AddPrompt(
            pb.AddPromptRequest(session_id=sid, object_id=1, slice=2, box=pb.Box(x0=8, y0=8, x1=40, y1=40)),
            metadata=alice.metadata,
        )
    )
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    retry = _details(error)["RetryInfo"].retry_delay
    assert (retry.seconds, retry.nanos) == (2, 0)
    typed = ServiceError.from_rpc_error(error)
    assert (typed.reason, typed.retry_after_s) == ("STORE_UNAVAILABLE", 2.0)
    assert alice.get_session(sid).object_ids == []


def test_a_stream_that_fails_ends_with_its_status_and_details(alice: Client) -> None:
    sid = alice.create_session(volume(), preset="none").session_id
    error = _failure(lambda: alice.propagate(sid))
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert _details(error)["ErrorInfo"].reason == "NO_PROMPTS"


def test_unary_errors_log_no_serialization_traceback(alice: Client, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for _ in range(3):
        _failure(lambda: alice.stub.GetSession(pb.GetSessionRequest(session_id="nope"), metadata=alice.metadata))
        _failure(lambda: alice.stub.CloseSession(pb.CloseSessionRequest(session_id="s" * 500), metadata=alice.metadata))
    noisy = [r for r in caplog.records if "serializ" in r.getMessage().lower() or r.exc_info]
    assert not noisy, [r.getMessage() for r in noisy]


def test_a_kept_image_comes_back_in_chunks_as_the_uploaded_voxels(alice: Client) -> None:
    voxels = np.random.default_rng(1).integers(0, 256, (SLICES, 300, 300), dtype=np.uint8)  # gzip can't shrink it
    session = alice.create_session(voxels, preset="none", keep_image=True)
    assert list(session.shape) == [SLICES, 300, 300] and session.image_kept
    chunks = list(
        alice.stub.GetImage(
            pb.GetImageRequest(session_id=session.session_id, chunk_bytes=65536), metadata=alice.metadata
        )
    )
    assert len(chunks) > 1 and all(len(c.data) <= 65536 for c in chunks)
    image = nib.Nifti1Image.from_bytes(gzip.decompress(b"".join(c.data for c in chunks)))
    # NIfTI stores (x, y, z): columns, rows, slices.
    assert np.array_equal(np.asarray(image.dataobj).transpose(2, 1, 0), voxels)
    alice.close_session(session.session_id)
