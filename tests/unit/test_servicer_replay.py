"""Journaling and replay through the servicer's RPCs: another replica rebuilds a session exactly, from the store.

Two servicers (two replicas) on the FakeBackend share one session store. Whatever one acknowledged, the other
rebuilds on its first request for the session by replaying the journal: the same masks, objects and history. A
store that fails while a session is created, journaled or read leaves nothing half-done, and the retry works.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from servicer_calls import (
    SLICES,
    Call,
    FlakyStore,
    box_prompt,
    call_stream,
    call_unary,
    create,
    make_servicer,
    propagate,
    volume,
)

from medsam2.api.pb.medsam2.v1 import segmentation_pb2 as pb
from medsam2.graphs import Stage
from medsam2.server.annotation_store import AnnotationStore
from medsam2.server.servicer import SegmentationServicer
from medsam2.testing.fake_backend import FakeBackend


@pytest.fixture()
def store() -> FlakyStore:
    return FlakyStore()


@pytest.fixture()
def replicas(store: FlakyStore, tmp_path: Path) -> tuple[SegmentationServicer, SegmentationServicer]:
    return make_servicer(store, tmp_path), make_servicer(store, tmp_path)


def snapshot(servicer: SegmentationServicer, session_id: str, principal: str = "alice") -> tuple:
    """What a client can read of a session: its description, history, every slice's masks and the label volume."""
    described = servicer.GetSession(pb.GetSessionRequest(session_id=session_id), Call(principal))
    slices = call_stream(servicer.GetSlices, pb.GetSlicesRequest(session_id=session_id), Call(principal))
    labels = call_stream(
        servicer.GetResult,
        pb.GetResultRequest(session_id=session_id, format=pb.RESULT_FORMAT_RAW_LABELS),
        Call(principal),
    )
    assert slices is not None and labels is not None
    return (
        list(described.object_ids),
        list(described.history),
        [s.SerializeToString() for s in slices],
        b"".join(c.data for c in labels),
        [list(c.labels) for c in labels[:1]],
    )


def work(servicer: SegmentationServicer, session_id: str) -> None:
    """A reader's session: two objects (one named), propagation, a correction, a reset and a re-prompt."""
    named = box_prompt(session_id, 1, 2, object_info=pb.ObjectInfo(label="liver lesion", colour_rgb=[0, 255, 0]))
    assert call_unary(servicer.AddPrompt, named, Call()) is not None
    assert call_unary(servicer.AddPrompt, box_prompt(session_id, 2, 1), Call()) is not None
    assert len(propagate(servicer, session_id, Call())) >= SLICES
    click = pb.AddPromptRequest(
        session_id=session_id, object_id=1, slice=4, points=[pb.Point(x=30, y=30, positive=False)], correction=True
    )
    assert call_unary(servicer.AddPrompt, click, Call()) is not None
    assert call_unary(servicer.ResetObjects, pb.ResetObjectsRequest(session_id=session_id, object_ids=[2]), Call())
    assert call_unary(servicer.AddPrompt, box_prompt(session_id, 3, 0), Call()) is not None


def test_another_replica_rebuilds_the_session_exactly_from_the_journal(replicas) -> None:
    first, second = replicas
    session = create(first, volume(), "", Call())
    assert session is not None and session.durable
    sid = session.session_id
    work(first, sid)
    before = snapshot(first, sid)
    assert before[1] == [
        "AddPrompt object 1 slice 2 box",
        "AddPrompt object 2 slice 1 box",
        "Propagate",
        "AddPrompt object 1 slice 4 clicks correction",
        "ResetObjects [2]",
        "AddPrompt object 3 slice 0 box",
    ]
    assert before[0] == [1, 3] and any(before[3])
    assert snapshot(second, sid) == before
    # The rebuilt session goes on as the first would: the next change is journaled once, and both agree on it.
    assert len(propagate(second, sid, Call())) >= SLICES
    assert snapshot(second, sid)[1][-1] == "Propagate"


def test_a_session_is_rebuilt_for_its_owner_only_and_a_close_closes_it_in_the_store(
    replicas, store: FlakyStore, tmp_path: Path
) -> None:
    first, second = replicas
    sid = create(first, volume(), "", Call()).session_id
    call_unary(first.AddPrompt, box_prompt(sid), Call())
    stranger = Call("bob")
    assert call_unary(second.GetSession, pb.GetSessionRequest(session_id=sid), stranger) is None
    assert stranger.code().name == "NOT_FOUND" and stranger.info().reason == "SESSION_NOT_FOUND"
    assert second.ListSessions(pb.ListSessionsRequest(), Call()).sessions == []  # and bob's miss rebuilt nothing
    assert second.CloseSession(pb.CloseSessionRequest(session_id=sid), Call("bob")).closed is False
    assert store.load(sid) is not None
    assert second.CloseSession(pb.CloseSessionRequest(session_id=sid), Call()).closed is True  # not held there
    assert store.load(sid) is None and store.journal(sid) == []
    third = make_servicer(store, tmp_path)
    call = Call()
    assert call_unary(third.GetSession, pb.GetSessionRequest(session_id=sid), call) is None
    assert call.code().name == "NOT_FOUND"


def test_retries_after_a_failover_are_answered_once(replicas, store: FlakyStore) -> None:
    first, second = replicas
    opened = create(first, volume(), "open-1", Call())
    sid = opened.session_id
    prompt = box_prompt(sid, request_id="box-1")
    reply = call_unary(first.AddPrompt, prompt, Call())
    # The first replica is lost; its client retries both requests on the second.
    assert create(second, volume(), "open-1", Call()).session_id == sid  # not a second session
    assert call_unary(second.AddPrompt, prompt, Call()) == reply  # the replay remembered the request id
    assert [e.method for e in store.journal(sid)] == ["AddPrompt"]
    reused = Call()
    assert call_unary(second.AddPrompt, box_prompt(sid, 2, request_id="box-1"), reused) is None
    assert reused.info().reason == "REQUEST_ID_REUSED"


def test_a_saved_annotation_is_not_saved_again_by_a_retry_on_another_replica(store: FlakyStore, tmp_path: Path) -> None:
    cases = tmp_path / "cases"
    first, second = (make_servicer(store, tmp_path, annotations=AnnotationStore(cases)) for _ in range(2))
    sid = create(first, volume(), "", Call()).session_id
    call_unary(first.AddPrompt, box_prompt(sid), Call())
    request = pb.SaveAnnotationRequest(session_id=sid, case_name="case", request_id="save-1")
    saved = first.SaveAnnotation(request, Call())
    assert second.SaveAnnotation(request, Call()) == saved
    assert len(list(cases.rglob("*.npz"))) == 1
    store.failures = 1  # a save whose reply cannot be kept is refused: UNAVAILABLE, which clients retry
    refused = Call()
    assert (
        call_unary(first.SaveAnnotation, pb.SaveAnnotationRequest(session_id=sid, request_id="save-2"), refused) is None
    )
    assert refused.code().name == "UNAVAILABLE"


def test_a_session_whose_record_cannot_be_stored_does_not_exist_and_the_retry_opens_it(
    replicas, store: FlakyStore
) -> None:
    first, second = replicas
    store.failures = 1
    refused = Call()
    assert create(first, volume(), "open-2", refused) is None
    assert refused.code().name == "UNAVAILABLE" and refused.info().reason == "STORE_UNAVAILABLE"
    assert first.ListSessions(pb.ListSessionsRequest(), Call()).sessions == []
    retried = create(second, volume(), "open-2", Call())
    assert retried is not None and retried.durable
    assert [s.session_id for s in first.ListSessions(pb.ListSessionsRequest(), Call()).sessions] == []
    assert first.GetSession(pb.GetSessionRequest(session_id=retried.session_id), Call()).durable  # rebuilt


def test_a_store_that_cannot_be_read_fails_the_rebuild_and_the_next_request_rebuilds(
    replicas, store: FlakyStore
) -> None:
    first, second = replicas
    sid = create(first, volume(), "", Call()).session_id
    work(first, sid)
    before = snapshot(first, sid)
    for failures in (1, 2):  # the record, then the journal
        store.read_failures = failures
        call = Call()
        assert call_unary(second.GetSession, pb.GetSessionRequest(session_id=sid), call) is None
        assert call.code().name == "UNAVAILABLE" and call.retry_after_s() is not None
        assert second.ListSessions(pb.ListSessionsRequest(), Call()).sessions == []  # nothing half-replayed
    store.read_failures = 0
    assert snapshot(second, sid) == before


class _FailsOnce(FakeBackend):
    """A backend whose ``failing``-th SAM heads call fails once (a replica's backend hiccup during a replay)."""

    def __init__(self, failing: int) -> None:
        super().__init__()
        self.failing = failing

    def run(self, stage: Stage, inputs):
        if stage is Stage.SAM_HEADS:
            self.failing -= 1
            if self.failing == 0:
                raise RuntimeError("backend hiccup")
        return super().run(stage, inputs)


def test_a_replay_that_fails_halfway_is_discarded_and_the_next_request_replays_it_whole(
    store: FlakyStore, tmp_path: Path
) -> None:
    first = make_servicer(store, tmp_path)
    sid = create(first, volume(), "", Call()).session_id
    work(first, sid)
    before = snapshot(first, sid)
    second = make_servicer(store, tmp_path, backend=_FailsOnce(4))  # past both prompts, inside the propagation
    call = Call()
    assert call_unary(second.GetSession, pb.GetSessionRequest(session_id=sid), call) is None
    assert call.code().name == "INTERNAL"
    assert second.ListSessions(pb.ListSessionsRequest(), Call()).sessions == []
    assert snapshot(second, sid) == before
    assert len(store.journal(sid)) == 6, "the replays were journaled again"
