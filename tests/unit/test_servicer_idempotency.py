"""Request ids through the servicer's RPCs, in one replica: a retry repeats nothing, a reused id is refused.

Retries across replicas (through the session store) are in test_servicer_replay.py, and retries of a change whose
journal write failed in test_journal_failures.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from servicer_calls import Call, box_prompt, call_unary, create, make_servicer, volume

from medsam2.api.pb.medsam2.v1 import segmentation_pb2 as pb
from medsam2.server.annotation_store import AnnotationStore
from medsam2.server.idempotency import REMEMBERED_REPLIES
from medsam2.server.servicer import SegmentationServicer


@pytest.fixture()
def servicer(tmp_path: Path) -> SegmentationServicer:
    return make_servicer(None, tmp_path, annotations=AnnotationStore(tmp_path / "cases"))


def _click(sid: str, request_id: str, x: float, object_id: int = 1) -> pb.AddPromptRequest:
    return pb.AddPromptRequest(
        session_id=sid,
        object_id=object_id,
        slice=2,
        points=[pb.Point(x=x, y=20.0, positive=True)],
        keep_previous_points=True,
        request_id=request_id,
    )


def _clicks_kept(servicer: SegmentationServicer, sid: str, object_id: int = 1) -> int:
    entry = servicer.registry.get(sid, principal="alice")
    return sum(len(p.points) for p in entry.annotation.prompts()[object_id] if p.points is not None)


def test_a_retried_prompt_gets_the_first_reply_and_is_applied_once(servicer: SegmentationServicer) -> None:
    sid = create(servicer, volume(), "", Call()).session_id
    call_unary(servicer.AddPrompt, box_prompt(sid), Call())
    first = call_unary(servicer.AddPrompt, _click(sid, "c-1", 20.0), Call())
    assert call_unary(servicer.AddPrompt, _click(sid, "c-1", 20.0), Call()) == first
    assert _clicks_kept(servicer, sid) == 1
    without_id = _click(sid, "", 20.0)  # no id: every call is a new click
    call_unary(servicer.AddPrompt, without_id, Call())
    call_unary(servicer.AddPrompt, without_id, Call())
    assert _clicks_kept(servicer, sid) == 3


def test_prompt_replies_are_remembered_for_the_latest_ids_only(servicer: SegmentationServicer) -> None:
    sid = create(servicer, volume(), "", Call()).session_id
    ids = range(1, REMEMBERED_REPLIES + 2)  # one click on each of 33 objects, each with its own request id
    for k in ids:
        assert call_unary(servicer.AddPrompt, _click(sid, f"c-{k}", 20.0, k), Call()) is not None
    last = ids[-1]
    call_unary(servicer.AddPrompt, _click(sid, f"c-{last}", 20.0, last), Call())
    assert _clicks_kept(servicer, sid, last) == 1, "a remembered id was applied again"
    call_unary(servicer.AddPrompt, _click(sid, "c-1", 20.0, 1), Call())  # the oldest is forgotten: a new click
    assert _clicks_kept(servicer, sid, 1) == 2


def test_a_saved_annotation_is_saved_once_per_request_id(servicer: SegmentationServicer, tmp_path: Path) -> None:
    sid = create(servicer, volume(), "", Call()).session_id
    call_unary(servicer.AddPrompt, box_prompt(sid), Call())
    request = pb.SaveAnnotationRequest(session_id=sid, case_name="liver", request_id="save-1")
    saved = servicer.SaveAnnotation(request, Call())
    assert servicer.SaveAnnotation(request, Call()) == saved
    assert len(list((tmp_path / "cases").rglob("*.npz"))) == 1
    reused = Call()
    other = pb.SaveAnnotationRequest(session_id=sid, case_name="spleen", request_id="save-1")
    assert call_unary(servicer.SaveAnnotation, other, reused) is None
    assert reused.code().name == "INVALID_ARGUMENT" and reused.info().reason == "REQUEST_ID_REUSED"
    assert reused.bad_field() == "request_id"
    servicer.SaveAnnotation(pb.SaveAnnotationRequest(session_id=sid, case_name="liver"), Call())
    assert len(list((tmp_path / "cases").rglob("*.npz"))) == 2


def test_a_create_retried_after_its_session_closed_opens_it_again(servicer: SegmentationServicer) -> None:
    first = create(servicer, volume(), "open-1", Call())
    assert create(servicer, volume(), "open-1", Call()).session_id == first.session_id
    servicer.CloseSession(pb.CloseSessionRequest(session_id=first.session_id), Call())
    again = create(servicer, volume(), "open-1", Call())
    assert again is not None and again.session_id != first.session_id
    assert [s.session_id for s in servicer.ListSessions(pb.ListSessionsRequest(), Call()).sessions] == [
        again.session_id
    ]
    # The id now names the new session.
    assert create(servicer, volume(), "open-1", Call()).session_id == again.session_id
