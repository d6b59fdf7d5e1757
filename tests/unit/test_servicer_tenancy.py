"""Tenancy through the servicer's RPCs: private sessions, per-principal quotas and eviction, tokens, the audit log.

The servicer runs in-process on the FakeBackend; each call carries a bearer token as the gateway passes it on.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from servicer_calls import Call, call_stream, call_unary, create, make_servicer, propagate, volume

from medsam2.api.pb.medsam2.v1 import segmentation_pb2 as pb
from medsam2.server.audit import AUDIT_LOGGER
from medsam2.server.servicer import SegmentationServicer
from medsam2.server.sessions import Limits

BOX = pb.Box(x0=8, y0=8, x1=40, y1=40)


@pytest.fixture()
def servicer(tmp_path: Path) -> SegmentationServicer:
    return make_servicer(None, tmp_path, limits=Limits(max_sessions=4, max_sessions_per_principal=2))


def _open(servicer: SegmentationServicer, principal: str, seed: int = 0, **header: object) -> str:
    session = create(servicer, volume(seed), "", Call(principal), **header)  # type: ignore[arg-type]
    assert session is not None
    return session.session_id


def _get(servicer: SegmentationServicer, session_id: str, principal: str = "alice") -> Call:
    """GetSession's call (check ``failed()``)."""
    call = Call(principal)
    call_unary(servicer.GetSession, pb.GetSessionRequest(session_id=session_id), call)
    return call


def test_another_principals_session_is_indistinguishable_from_one_that_never_existed(
    servicer: SegmentationServicer,
) -> None:
    sid = _open(servicer, "alice", keep_image=True)
    assert call_unary(servicer.AddPrompt, pb.AddPromptRequest(session_id=sid, object_id=1, slice=1, box=BOX), Call())
    unknown = _get(servicer, "f" * 32, "bob")
    assert unknown.code().name == "NOT_FOUND" and unknown.info().reason == "SESSION_NOT_FOUND"
    unary = {
        "GetSession": (servicer.GetSession, pb.GetSessionRequest(session_id=sid)),
        "AddPrompt": (servicer.AddPrompt, pb.AddPromptRequest(session_id=sid, object_id=1, slice=1, box=BOX)),
        "ResetObjects": (servicer.ResetObjects, pb.ResetObjectsRequest(session_id=sid, all=True)),
    }
    streams = {
        "Propagate": (servicer.Propagate, pb.PropagateRequest(session_id=sid)),
        "GetResult": (servicer.GetResult, pb.GetResultRequest(session_id=sid)),
        "GetSlices": (servicer.GetSlices, pb.GetSlicesRequest(session_id=sid)),
        "GetImage": (servicer.GetImage, pb.GetImageRequest(session_id=sid)),
    }
    for name, (method, request) in {**unary, **streams}.items():
        call = Call("bob")
        reply = (call_stream if name in streams else call_unary)(method, request, call)
        assert reply is None, f"bob's {name} on alice's session succeeded"
        assert call.code().name == "NOT_FOUND" and call.info().reason == "SESSION_NOT_FOUND", name
        assert call.details() == unknown.details().replace("f" * 32, sid), name
    closed = servicer.CloseSession(pb.CloseSessionRequest(session_id=sid), Call("bob"))
    assert closed.closed is False
    assert list(servicer.ListSessions(pb.ListSessionsRequest(), Call("bob")).sessions) == []
    mine = servicer.ListSessions(pb.ListSessionsRequest(), Call("alice")).sessions
    assert [s.session_id for s in mine] == [sid] and list(mine[0].object_ids) == [1], "bob's reset changed alice's"
    assert len(propagate(servicer, sid, Call("alice"))) == 5  # and alice can still work on it


def test_a_principals_quota_evicts_only_their_own_idle_sessions(servicer: SegmentationServicer) -> None:
    kept = _open(servicer, "alice")
    bobs = [_open(servicer, "bob", seed) for seed in range(3)]  # bob's quota is 2
    gone = _get(servicer, bobs[0], "bob")
    assert gone.code().name == "NOT_FOUND" and gone.info().reason == "SESSION_EVICTED"
    assert not _get(servicer, bobs[1], "bob").failed() and not _get(servicer, bobs[2], "bob").failed()
    assert not _get(servicer, kept, "alice").failed()
    # An evicted session is a tombstone for its owner only: for anyone else it never existed.
    assert _get(servicer, bobs[0], "alice").info().reason == "SESSION_NOT_FOUND"


def test_a_full_service_evicts_the_least_recently_used_idle_session_of_anyone(servicer: SegmentationServicer) -> None:
    oldest = _open(servicer, "alice", 0)
    newer = _open(servicer, "alice", 1)
    bobs = [_open(servicer, "bob", seed) for seed in (2, 3)]
    assert not _get(servicer, oldest, "alice").failed()  # used again: now newer is alice's least recently used
    _open(servicer, "carol")  # the service (4) is full
    gone = _get(servicer, newer, "alice")
    assert gone.info().reason == "SESSION_EVICTED" and "evicted" in gone.details()
    assert all(not _get(servicer, s, p).failed() for s, p in [(oldest, "alice"), *((b, "bob") for b in bobs)])


def test_a_busy_session_is_never_evicted_and_a_full_service_of_busy_sessions_says_when_to_retry(
    tmp_path: Path,
) -> None:
    servicer = make_servicer(None, tmp_path, limits=Limits(max_sessions=1, lock_wait_s=0.05))
    sid = _open(servicer, "alice")
    servicer.AddPrompt(pb.AddPromptRequest(session_id=sid, object_id=1, slice=2, box=BOX), Call())
    stream = servicer.Propagate(pb.PropagateRequest(session_id=sid), Call())
    next(stream)  # the propagation holds the session
    refused = Call("bob")
    assert create(servicer, volume(1), "", refused) is None
    assert refused.code().name == "RESOURCE_EXHAUSTED" and refused.info().reason == "SERVICE_FULL"
    assert refused.retry_after_s() == 10.0
    assert len(list(stream)) == 4  # the propagation ran on, untouched
    assert not _get(servicer, sid).failed()


def test_an_unknown_or_missing_token_is_unauthenticated_and_touches_nothing(servicer: SegmentationServicer) -> None:
    sid = _open(servicer, "alice")
    for call in (Call(token="not-a-token"), Call(token="")):
        assert call_unary(servicer.ListSessions, pb.ListSessionsRequest(), call) is None
        assert call.code().name == "UNAUTHENTICATED" and call.info().reason == "UNAUTHENTICATED"
        assert call.retry_after_s() is None
    stranger = Call(token="token-a-but-longer")
    assert call_unary(servicer.CloseSession, pb.CloseSessionRequest(session_id=sid), stranger) is None
    assert stranger.code().name == "UNAUTHENTICATED"
    assert not _get(servicer, sid).failed()


def test_close_is_the_owners_and_a_closed_session_says_so(servicer: SegmentationServicer) -> None:
    sid = _open(servicer, "alice")
    assert servicer.CloseSession(pb.CloseSessionRequest(session_id=sid), Call()).closed is True
    assert servicer.CloseSession(pb.CloseSessionRequest(session_id=sid), Call()).closed is False
    gone = _get(servicer, sid)
    assert gone.code().name == "NOT_FOUND" and gone.info().reason == "SESSION_CLOSED"
    assert gone.info().metadata["field"] == "session_id"


def test_the_audit_log_says_who_did_what_and_holds_no_patient_data(
    servicer: SegmentationServicer, caplog: pytest.LogCaptureFixture
) -> None:
    label = "Doe^Jane 1.2.840.99 CT-abdomen.nii.gz"
    caplog.set_level(logging.INFO, logger=AUDIT_LOGGER)
    sid = _open(servicer, "alice", label=label, external_id="ACC-4711")
    _get(servicer, "nope", "bob")
    servicer.CloseSession(pb.CloseSessionRequest(session_id=sid), Call())
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == AUDIT_LOGGER]
    assert all(set(line) == {"time", "principal", "rpc", "session_id", "outcome", "duration_s"} for line in lines)
    assert [(x["principal"], x["rpc"], x["session_id"], x["outcome"]) for x in lines] == [
        ("alice", "CreateSession", sid, "OK"),
        ("bob", "GetSession", "nope", "NOT_FOUND"),
        ("alice", "CloseSession", sid, "OK"),
    ]
    text = "\n".join(r.getMessage() for r in caplog.records)
    for secret in ("Doe", "1.2.840.99", "nii.gz", "ACC-4711", "token-a"):
        assert secret not in text


def test_a_session_describes_what_its_owner_uploaded(servicer: SegmentationServicer) -> None:
    session = create(servicer, volume(7), "", Call(), label="case 7", external_id="ACC-7")
    assert session is not None
    assert (list(session.shape), session.label, session.external_id) == ([5, 64, 64], "case 7", "ACC-7")
    assert (session.backend, session.durable, list(session.object_ids)) == ("fake", False, [])
    assert session.expires_in_seconds == pytest.approx(1800.0, abs=5)
    listed = servicer.ListSessions(pb.ListSessionsRequest(), Call()).sessions
    assert [s.session_id for s in listed] == [session.session_id]
