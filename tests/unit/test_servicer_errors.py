"""Error mapping through the servicer's RPCs: each refusal's status, ErrorInfo reason, BadRequest field, RetryInfo.

Every case is one real request to an in-process servicer on the FakeBackend. The status and whether a RetryInfo is
sent come from the reason catalogue (``errors.REASONS``); INVALID_ARGUMENT must name the field at fault. The same
walk over a gRPC server with the real graphs is tests/integration/test_error_reasons.py; this one runs in the unit
tier, in well under a second per case.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from servicer_calls import (
    SIDE,
    SLICES,
    Call,
    FlakyStore,
    box_prompt,
    call_stream,
    call_unary,
    create,
    make_servicer,
    volume,
)

from medsam2.api.masks import encode_rle
from medsam2.api.pb.medsam2.v1 import segmentation_pb2 as pb
from medsam2.errors import REASON_BY_NAME
from medsam2.graphs import Stage
from medsam2.server.annotation_store import AnnotationStore
from medsam2.server.servicer import SegmentationServicer
from medsam2.server.sessions import Limits
from medsam2.server.status import status_for
from medsam2.server.uploads import UploadGuard, UploadLimits
from medsam2.testing.fake_backend import FakeBackend


@pytest.fixture()
def servicer(tmp_path: Path) -> SegmentationServicer:
    return make_servicer(None, tmp_path, limits=Limits(lock_wait_s=0.05), admins=("carol",))


@pytest.fixture()
def sid(servicer: SegmentationServicer) -> str:
    """A session with object 1 boxed on slice 2 (not propagated)."""
    session = create(servicer, volume(), "", Call())
    assert session is not None
    assert call_unary(servicer.AddPrompt, box_prompt(session.session_id), Call()) is not None
    return session.session_id


def refused(method: Callable, request: object, principal: str = "alice") -> Call:
    """The call of ``request`` (a stream is read to its end), which must have failed."""
    call = Call(principal)
    streams = inspect.isgeneratorfunction(getattr(method, "__wrapped__", method))
    reply = (call_stream if streams else call_unary)(method, request, call)
    assert reply is None and call.failed(), f"{type(request).__name__} was not refused"
    return call


def check(name: str, call: Call) -> None:
    """``call`` failed with reason ``name``, with the catalogue's status and RetryInfo and the details it implies."""
    reason = REASON_BY_NAME[name]
    info = call.info()
    assert (info.reason, info.domain, call.code()) == (name, "medsam2", status_for(reason.error)), call.details()
    field = call.bad_field()
    if call.code() is grpc.StatusCode.INVALID_ARGUMENT:
        assert field, f"{name}: INVALID_ARGUMENT without a BadRequest field"
        assert info.metadata["field"] == field
    else:
        assert field is None, f"{name}: a BadRequest on {call.code().name}"
    retry = call.retry_after_s()
    if call.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE):
        assert (retry is not None) == reason.retry, f"{name}: RetryInfo {retry} where the catalogue says {reason.retry}"
    else:
        assert retry is None, name


@pytest.mark.parametrize(
    ("method", "request_", "field"),
    [
        ("Propagate", pb.PropagateRequest(session_id="x", direction=17), "direction"),
        ("Propagate", pb.PropagateRequest(session_id="x", protocol=7), "protocol"),
        ("Propagate", pb.PropagateRequest(session_id="x", encoding=5), "encoding"),
        ("GetResult", pb.GetResultRequest(session_id="x", format=9), "format"),
        ("GetResult", pb.GetResultRequest(session_id="x", chunk_bytes=1), "chunk_bytes"),
        ("GetSession", pb.GetSessionRequest(session_id="s" * 129), "session_id"),
        (
            "AddPrompt",
            pb.AddPromptRequest(session_id="x", object_id=1, mask=pb.Mask(rows=1, columns=1, encoding=4, data=b"\x80")),
            "mask.encoding",
        ),
    ],
)
def test_a_malformed_request_is_invalid_argument_naming_its_field_before_any_lookup(
    servicer: SegmentationServicer, method: str, request_: object, field: str
) -> None:
    call = refused(getattr(servicer, method), request_)
    check("INVALID_INPUT", call)  # not SESSION_NOT_FOUND: the surface is checked first
    assert call.bad_field() == field


def test_an_unknown_header_enum_is_refused_before_the_upload_is_read(servicer: SegmentationServicer) -> None:
    call = Call()
    assert create(servicer, volume(), "", call, kind=42) is None
    check("INVALID_INPUT", call)
    assert call.bad_field() == "header.kind"


@pytest.mark.parametrize(
    ("box", "shown"),
    [((0.0, 0.0, SIDE + 5.0, 10.0), f"(0, 0, {SIDE + 5}, 10)"), ((float("nan"), 0.0, 10.0, 10.0), "(nan, 0, 10, 10)")],
)
def test_a_box_off_the_slice_is_an_invalid_prompt_naming_the_box(
    servicer: SegmentationServicer, sid: str, box: tuple[float, ...], shown: str
) -> None:
    request = pb.AddPromptRequest(
        session_id=sid, object_id=2, slice=0, box=pb.Box(x0=box[0], y0=box[1], x1=box[2], y1=box[3])
    )
    call = refused(servicer.AddPrompt, request)
    check("INVALID_PROMPT", call)
    assert call.bad_field() == "box" and shown in call.details() and "np.float64" not in call.details()
    assert list(servicer.GetSession(pb.GetSessionRequest(session_id=sid), Call()).object_ids) == [1]


def test_a_mask_prompt_claiming_more_pixels_than_the_slice_is_refused_before_decoding(
    servicer: SegmentationServicer, sid: str
) -> None:
    huge = pb.Mask(rows=32768, columns=32768, encoding=pb.MASK_ENCODING_RLE, data=np.array([2**30], "<u4").tobytes())
    call = refused(servicer.AddPrompt, pb.AddPromptRequest(session_id=sid, object_id=1, slice=0, mask=huge))
    assert call.code() is grpc.StatusCode.INVALID_ARGUMENT and "32768x32768" in call.details()
    ok = np.zeros((SIDE, SIDE), bool)
    ok[10:30, 10:30] = True
    right = pb.Mask(rows=SIDE, columns=SIDE, encoding=pb.MASK_ENCODING_RLE, data=encode_rle(ok))
    reply = call_unary(
        servicer.AddPrompt, pb.AddPromptRequest(session_id=sid, object_id=3, slice=0, mask=right), Call()
    )
    assert reply is not None and reply.slice == 0


def test_a_truncated_upload_is_invalid_argument_on_voxels_and_opens_nothing(servicer: SegmentationServicer) -> None:
    header = pb.StudyHeader(shape=[SLICES, SIDE, SIDE], dtype=pb.DATA_TYPE_UINT8)
    parts = iter([pb.CreateSessionRequest(header=header), pb.CreateSessionRequest(voxels=b"\0" * 10)])
    call = refused(servicer.CreateSession, parts)
    check("UPLOAD_TRUNCATED", call)
    assert call.bad_field() == "voxels" and "after 10 of" in call.details()
    assert list(servicer.ListSessions(pb.ListSessionsRequest(), Call()).sessions) == []


def test_the_session_workflow_refusals(servicer: SegmentationServicer, sid: str, tmp_path: Path) -> None:
    fresh = create(servicer, volume(1), "", Call())
    assert fresh is not None
    check("NO_PROMPTS", refused(servicer.Propagate, pb.PropagateRequest(session_id=fresh.session_id)))
    correction = pb.AddPromptRequest(
        session_id=sid, object_id=1, slice=3, points=[pb.Point(x=10, y=10, positive=True)], correction=True
    )
    check("NOT_PROPAGATED", refused(servicer.AddPrompt, correction))
    missing = refused(servicer.ResetObjects, pb.ResetObjectsRequest(session_id=sid, object_ids=[1, 7]))
    check("OBJECT_NOT_FOUND", missing)
    assert missing.info().metadata["field"] == "object_ids" and "[7]" in missing.details()
    check("IMAGE_NOT_KEPT", refused(servicer.GetImage, pb.GetImageRequest(session_id=sid)))
    dicom = refused(servicer.GetResult, pb.GetResultRequest(session_id=sid, format=pb.RESULT_FORMAT_DICOM_SEG))
    check("NO_DICOM_SOURCE", dicom)
    wrong_range = refused(servicer.GetSlices, pb.GetSlicesRequest(session_id=sid, first_slice=2, last_slice=SLICES))
    check("INVALID_INPUT", wrong_range)
    assert wrong_range.bad_field() == "last_slice"
    out_of_range = refused(servicer.Propagate, pb.PropagateRequest(session_id=sid, first_slice=0, last_slice=SLICES))
    assert (
        out_of_range.code() is grpc.StatusCode.INVALID_ARGUMENT and f"study's {SLICES} slices" in out_of_range.details()
    )


def test_a_named_dicom_upload_without_a_pacs_cannot_make_a_seg(servicer: SegmentationServicer) -> None:
    uids = [f"1.2.3.{k}" for k in range(SLICES)]
    session = create(servicer, volume(), "", Call(), study_uid="1.2", series_uid="1.2.3", sop_instance_uids=uids)
    assert session is not None and list(session.sop_instance_uids) == uids
    call_unary(servicer.AddPrompt, box_prompt(session.session_id), Call())
    request = pb.GetResultRequest(session_id=session.session_id, format=pb.RESULT_FORMAT_DICOM_SEG)
    check("DICOM_HEADERS_MISSING", refused(servicer.GetResult, request))
    repeated = Call()
    assert create(servicer, volume(), "", repeated, sop_instance_uids=["1.2.3.1"] * SLICES) is None
    assert repeated.code() is grpc.StatusCode.INVALID_ARGUMENT and "repeats a UID" in repeated.details()


def test_features_the_server_lacks_are_failed_preconditions(servicer: SegmentationServicer, sid: str) -> None:
    pacs = pb.StudyHeader(pacs=pb.PacsReference(endpoint="any", study_uid="1.2.3"))
    check("PACS_NOT_CONFIGURED", refused(servicer.CreateSession, iter([pb.CreateSessionRequest(header=pacs)])))
    store = refused(servicer.StoreResult, pb.StoreResultRequest(session_id=sid, endpoint="any"))
    check("PACS_NOT_CONFIGURED", store)
    check("ANNOTATION_STORE_DISABLED", refused(servicer.SaveAnnotation, pb.SaveAnnotationRequest(session_id=sid)))
    check("PERMISSION_DENIED", refused(servicer.SetModelVersion, pb.SetModelVersionRequest(version=2)))
    check("MODEL_NOT_VERSIONED", refused(servicer.SetModelVersion, pb.SetModelVersionRequest(version=2), "carol"))


def test_saving_annotations_refuses_an_empty_session_and_a_full_folder(tmp_path: Path) -> None:
    servicer = make_servicer(None, tmp_path, annotations=AnnotationStore(tmp_path / "cases", max_bytes_per_principal=1))
    sid = create(servicer, volume(), "", Call()).session_id
    check("NO_MASKS", refused(servicer.SaveAnnotation, pb.SaveAnnotationRequest(session_id=sid)))
    call_unary(servicer.AddPrompt, box_prompt(sid), Call())
    saved = servicer.SaveAnnotation(pb.SaveAnnotationRequest(session_id=sid, case_name="c1"), Call())
    assert list(saved.object_ids) == [1] and (tmp_path / "cases" / saved.folder / saved.case_file).is_file()
    check("ANNOTATION_QUOTA", refused(servicer.SaveAnnotation, pb.SaveAnnotationRequest(session_id=sid)))


def test_a_study_over_the_voxel_limit_is_refused_from_its_header_without_retry_info(
    servicer: SegmentationServicer,
) -> None:
    huge = pb.StudyHeader(shape=[4096, 4096, 4096], dtype=pb.DATA_TYPE_UINT8)
    call = refused(servicer.CreateSession, iter([pb.CreateSessionRequest(header=huge)]))
    check("STUDY_TOO_LARGE", call)
    thin = pb.StudyHeader(shape=[2000, 1, 1], dtype=pb.DATA_TYPE_UINT8)  # 2 KB that would be 500 MiB at 512²
    call = refused(servicer.CreateSession, iter([pb.CreateSessionRequest(header=thin)]))
    check("STUDY_TOO_LARGE", call)
    assert "resized to 512x512" in call.details()


def test_a_session_held_by_a_propagation_is_aborted_naming_what_holds_it(
    servicer: SegmentationServicer, sid: str
) -> None:
    stream = servicer.Propagate(pb.PropagateRequest(session_id=sid), Call())
    next(stream)
    busy = refused(servicer.AddPrompt, box_prompt(sid, 2, 1))
    check("SESSION_BUSY", busy)
    assert "Propagate has held it for" in busy.details()
    assert len(list(stream)) == SLICES - 1
    assert list(servicer.GetSession(pb.GetSessionRequest(session_id=sid), Call()).object_ids) == [1]


def test_a_principal_whose_every_session_is_busy_is_told_when_to_retry(tmp_path: Path) -> None:
    servicer = make_servicer(None, tmp_path, limits=Limits(max_sessions_per_principal=1, lock_wait_s=0.05))
    sid = create(servicer, volume(), "", Call()).session_id
    call_unary(servicer.AddPrompt, box_prompt(sid), Call())
    stream = servicer.Propagate(pb.PropagateRequest(session_id=sid), Call())
    next(stream)
    call = Call()
    assert create(servicer, volume(1), "", call) is None
    check("PRINCIPAL_QUOTA", call)
    assert create(servicer, volume(1), "", Call("bob")) is not None  # bob's quota is his own
    list(stream)


def test_uploads_over_the_cap_are_refused_with_retry_info(tmp_path: Path) -> None:
    servicer = make_servicer(None, tmp_path)
    servicer.uploads = UploadGuard(UploadLimits(max_concurrent=1), servicer.registry)
    header = pb.StudyHeader(shape=[SLICES, SIDE, SIDE], dtype=pb.DATA_TYPE_UINT8)
    reading, release = threading.Event(), threading.Event()

    def slow() -> Iterator[pb.CreateSessionRequest]:
        yield pb.CreateSessionRequest(header=header)
        reading.set()
        release.wait(10)
        yield pb.CreateSessionRequest(voxels=volume().tobytes())

    first = Call()
    worker = threading.Thread(target=lambda: servicer.CreateSession(slow(), first))
    worker.start()
    try:
        assert reading.wait(10)
        call = Call("bob")
        assert create(servicer, volume(), "", call) is None
        check("UPLOADS_FULL", call)
    finally:
        release.set()
        worker.join(10)
    assert not first.failed() and create(servicer, volume(), "", Call("bob")) is not None  # the slot is free again


def test_a_store_that_fails_is_unavailable_with_retry_info(tmp_path: Path) -> None:
    store = FlakyStore()
    servicer = make_servicer(store, tmp_path)
    sid = create(servicer, volume(), "", Call()).session_id
    store.failures = 1
    call = refused(servicer.AddPrompt, box_prompt(sid))
    check("STORE_UNAVAILABLE", call)
    assert call.retry_after_s() == 2.0


class _BrokenBackend(FakeBackend):
    """A backend whose SAM heads fail with a message that must not reach the client."""

    def run(self, stage: Stage, inputs):
        if stage is Stage.SAM_HEADS:
            raise RuntimeError("CUDA error at /srv/secret/path.cu:42")
        return super().run(stage, inputs)


def test_an_unexpected_failure_is_internal_logged_and_tells_the_client_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    servicer = make_servicer(None, tmp_path, backend=_BrokenBackend())
    sid = create(servicer, volume(), "", Call()).session_id
    with caplog.at_level(logging.ERROR, logger="medsam2.server.status"):
        call = refused(servicer.AddPrompt, box_prompt(sid))
    assert call.code() is grpc.StatusCode.INTERNAL and call.info().reason == "INTERNAL"
    assert call.details() == "internal error (RuntimeError); see the server log"
    assert "secret" not in str(call.status)
    assert any(r.exc_info and "secret" in str(r.exc_info[1]) for r in caplog.records), "the cause was not logged"
    assert call.bad_field() is None and call.retry_after_s() is None
    # The session is as it was: the failed prompt added no object.
    assert list(servicer.GetSession(pb.GetSessionRequest(session_id=sid), Call()).object_ids) == []
