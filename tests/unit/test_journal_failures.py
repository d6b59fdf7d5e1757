"""A change is kept only once its journal entry is stored; request ids are answered once, per principal.

The servicer runs in-process on the FakeBackend with a durable session store that refuses writes on demand. A
refused journal write must leave the session exactly as before (prompts, tracks, masks, object metadata), and
the retry with the same request id must apply the change once. The same request id with another request is
INVALID_ARGUMENT with the reason REQUEST_ID_REUSED; CreateSession's ids are scoped to their principal.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from servicer_calls import SLICES, Call, FlakyStore, call_unary, create, make_servicer, propagate, volume

from medsam2.api.pb.medsam2.v1 import segmentation_pb2 as pb
from medsam2.server.servicer import SegmentationServicer


@pytest.fixture()
def store() -> FlakyStore:
    return FlakyStore()


@pytest.fixture()
def servicer(store: FlakyStore, tmp_path: Path) -> SegmentationServicer:
    return make_servicer(store, tmp_path)


def click(session_id: str, request_id: str, x: float = 20.0) -> pb.AddPromptRequest:
    return pb.AddPromptRequest(
        session_id=session_id,
        object_id=1,
        slice=2,
        points=[pb.Point(x=x, y=20.0, positive=False)],
        keep_previous_points=True,
        request_id=request_id,
    )


def state_of(servicer: SegmentationServicer, session_id: str) -> tuple:
    """Everything a prompt could change, in comparable form."""
    entry = servicer.registry.get(session_id, principal="alice")
    prompts = {
        i: [(p.frame, None if p.points is None else p.points.tolist(), p.box) for p in given]
        for i, given in entry.annotation.prompts().items()
    }
    masks = {i: m.tobytes() for i, m in entry.results.masks().items()}
    propagated = {i: entry.annotation.is_propagated(i) for i in entry.annotation.object_ids}
    return prompts, masks, propagated, dict(entry.objects), sorted(entry.tracker.objects)


def test_a_refused_journal_write_leaves_the_session_as_it_was_and_the_retry_applies_once(
    servicer: SegmentationServicer, store: FlakyStore
) -> None:
    session = create(servicer, volume(), "open-1", Call())
    assert session is not None and session.durable
    sid = session.session_id
    box = pb.AddPromptRequest(session_id=sid, object_id=1, slice=2, box=pb.Box(x0=8, y0=8, x1=40, y1=40))
    assert call_unary(servicer.AddPrompt, box, Call()) is not None
    before = state_of(servicer, sid)

    store.failures = 1
    refused = Call()
    assert call_unary(servicer.AddPrompt, click(sid, "click-1"), refused) is None
    assert refused.code().name == "UNAVAILABLE" and "refused by the test" in refused.details()
    assert state_of(servicer, sid) == before, "the refused click is in the session"
    assert len(store.journal(sid)) == 1

    first = call_unary(servicer.AddPrompt, click(sid, "click-1"), Call())
    again = call_unary(servicer.AddPrompt, click(sid, "click-1"), Call())
    assert first is not None and again == first
    assert [m for (m,) in [(e.method,) for e in store.journal(sid)]] == ["AddPrompt", "AddPrompt"]
    prompts = state_of(servicer, sid)[0]
    assert len(prompts[1]) == 2, f"the click was applied {len(prompts[1]) - 1} times: {prompts}"

    # A new object refused by the store does not exist afterwards.
    store.failures = 1
    other = pb.AddPromptRequest(session_id=sid, object_id=2, slice=1, box=pb.Box(x0=4, y0=4, x1=20, y1=20))
    assert call_unary(servicer.AddPrompt, other, Call()) is None
    described = servicer.GetSession(pb.GetSessionRequest(session_id=sid), Call())
    assert list(described.object_ids) == [1]


def test_a_propagation_whose_journal_write_fails_is_not_kept_and_runs_again(
    servicer: SegmentationServicer, store: FlakyStore
) -> None:
    sid = create(servicer, volume(1), "open-2", Call()).session_id
    box = pb.AddPromptRequest(session_id=sid, object_id=1, slice=2, box=pb.Box(x0=8, y0=8, x1=40, y1=40))
    call_unary(servicer.AddPrompt, box, Call())
    before = state_of(servicer, sid)
    store.failures = 1
    refused = Call()
    streamed = propagate(servicer, sid, refused)
    assert len(streamed) == SLICES and refused.code().name == "UNAVAILABLE"
    assert state_of(servicer, sid) == before, "an unjournaled propagation was kept"
    again = propagate(servicer, sid, Call())
    assert [r.slice for r in again] == [r.slice for r in streamed]
    assert state_of(servicer, sid)[2] == {1: True}
    assert [e.method for e in store.journal(sid)] == ["AddPrompt", "Propagate"]


def test_a_request_id_used_again_for_another_request_is_refused(servicer: SegmentationServicer) -> None:
    sid = create(servicer, volume(2), "open-3", Call()).session_id
    box = pb.AddPromptRequest(session_id=sid, object_id=1, slice=2, box=pb.Box(x0=8, y0=8, x1=40, y1=40))
    call_unary(servicer.AddPrompt, box, Call())
    assert call_unary(servicer.AddPrompt, click(sid, "click-9", x=20.0), Call()) is not None
    reused = Call()
    assert call_unary(servicer.AddPrompt, click(sid, "click-9", x=30.0), reused) is None
    assert reused.code().name == "INVALID_ARGUMENT" and reused.reason() == "REQUEST_ID_REUSED"
    assert "request_id" in reused.details()
    assert len(state_of(servicer, sid)[0][1]) == 2

    # CreateSession: the same id with other voxels is refused; with the same voxels it is the same session.
    again = create(servicer, volume(2), "open-3", Call())
    assert again is not None and again.session_id == sid
    other = Call()
    assert create(servicer, volume(3), "open-3", other) is None
    assert other.reason() == "REQUEST_ID_REUSED"


def test_create_session_request_ids_belong_to_their_principal(servicer: SegmentationServicer) -> None:
    mine = create(servicer, volume(4), "same-id", Call("alice"))
    theirs = create(servicer, volume(5), "same-id", Call("bob"))
    assert mine is not None and theirs is not None and mine.session_id != theirs.session_id
    assert create(servicer, volume(4), "same-id", Call("alice")).session_id == mine.session_id
    assert create(servicer, volume(5), "same-id", Call("bob")).session_id == theirs.session_id
