"""Limits through the servicer's RPCs: state caps, idle TTLs, upload sizes, message sizes and the drain.

The servicer runs in-process on the FakeBackend. Each limit refuses with its catalogued reason before the work it
bounds is done, and leaves the session as it was.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from servicer_calls import (
    SIDE,
    SLICES,
    Call,
    box_prompt,
    call_stream,
    call_unary,
    create,
    make_servicer,
    propagate,
    volume,
)

from medsam2.api.pb.medsam2.v1 import segmentation_pb2 as pb
from medsam2.graphs import MAX_POINTS
from medsam2.server.drain import Drain
from medsam2.server.sessions import Limits

STUDY_BYTES = SLICES * 512 * 512
"""The model's input of one test study: each slice resized to 512x512, one byte a pixel."""


class Clock:
    """A registry clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _session(servicer, principal: str = "alice") -> str:
    session = create(servicer, volume(), "", Call(principal))
    assert session is not None
    return session.session_id


def _describe(servicer, sid: str) -> pb.Session:
    return servicer.GetSession(pb.GetSessionRequest(session_id=sid), Call())


def test_a_state_cap_sheds_cached_features_first_and_the_propagation_completes(tmp_path: Path) -> None:
    cap = STUDY_BYTES + 3 * 2**20  # room for the outputs, not for every slice's cached features
    servicer = make_servicer(None, tmp_path, limits=Limits(max_state_bytes=cap))
    sid = _session(servicer)
    call_unary(servicer.AddPrompt, box_prompt(sid), Call())
    call = Call()
    assert len(propagate(servicer, sid, call)) >= SLICES and not call.failed()
    assert 0 < _describe(servicer, sid).state_bytes <= cap


def _slices(servicer, sid: str) -> list[bytes]:
    return [s.SerializeToString() for s in call_stream(servicer.GetSlices, pb.GetSlicesRequest(session_id=sid), Call())]


def test_a_state_cap_the_outputs_pass_ends_the_propagation_with_state_limit_and_keeps_nothing(tmp_path: Path) -> None:
    servicer = make_servicer(None, tmp_path, limits=Limits(max_state_bytes=STUDY_BYTES + 400_000))  # about 1 slice
    sid = _session(servicer)
    call_unary(servicer.AddPrompt, box_prompt(sid), Call())
    before = _slices(servicer, sid)
    call = Call()
    streamed = propagate(servicer, sid, call)
    assert call.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and call.info().reason == "STATE_LIMIT"
    assert "state limit" in call.details() and call.retry_after_s() == 10.0
    assert 0 < len(streamed) < SLICES
    # Not journaled, so not kept: the session is as before it (the prompt's mask included), not half-propagated.
    assert _slices(servicer, sid) == before


def test_a_cancelled_propagation_keeps_nothing_and_the_next_one_runs_as_if_it_had_not_been(tmp_path: Path) -> None:
    servicer = make_servicer(None, tmp_path)
    cut, whole = _session(servicer), _session(servicer)
    for sid in (cut, whole):
        call_unary(servicer.AddPrompt, box_prompt(sid), Call())
    before = _slices(servicer, cut)
    leaving = Call()
    stream = servicer.Propagate(pb.PropagateRequest(session_id=cut), leaving)
    next(stream)
    next(stream)
    leaving.cancel()  # the client went away
    assert list(stream) == []
    assert _slices(servicer, cut) == before
    assert not _describe(servicer, cut).busy
    again, once = propagate(servicer, cut, Call()), propagate(servicer, whole, Call())
    assert [r.SerializeToString() for r in again] == [r.SerializeToString() for r in once]
    assert _slices(servicer, cut) == _slices(servicer, whole)


def test_an_idle_session_expires_and_its_owner_is_told(tmp_path: Path) -> None:
    clock = Clock()
    servicer = make_servicer(None, tmp_path, limits=Limits(idle_ttl_s=60.0), clock=clock)
    idle, used = _session(servicer), _session(servicer)
    assert _describe(servicer, idle).expires_in_seconds == pytest.approx(60.0)
    clock.now += 45
    assert _describe(servicer, used).expires_in_seconds == pytest.approx(60.0)  # a read is a use: its clock restarts
    clock.now += 30
    assert servicer.registry.sweep() == 1  # what the server's reaper runs
    call = Call()
    assert call_unary(servicer.GetSession, pb.GetSessionRequest(session_id=idle), call) is None
    assert call.code() is grpc.StatusCode.NOT_FOUND and call.info().reason == "SESSION_EXPIRED"
    assert call_unary(servicer.GetSession, pb.GetSessionRequest(session_id=used), Call()) is not None


def test_uploads_must_match_their_header_exactly(tmp_path: Path) -> None:
    servicer = make_servicer(None, tmp_path)
    header = pb.StudyHeader(shape=[SLICES, SIDE, SIDE], dtype=pb.DATA_TYPE_UINT8)
    longer = [pb.CreateSessionRequest(header=header), pb.CreateSessionRequest(voxels=volume().tobytes() + b"\0")]
    call = Call()
    assert call_unary(servicer.CreateSession, iter(longer), call) is None
    assert call.code() is grpc.StatusCode.INVALID_ARGUMENT and "larger than the header says" in call.details()
    assert call.bad_field() == "voxels"
    twice = [pb.CreateSessionRequest(header=header), pb.CreateSessionRequest(header=header)]
    call = Call()
    assert call_unary(servicer.CreateSession, iter(twice), call) is None
    assert call.bad_field() == "voxels" and "only voxel chunks" in call.details()
    call = Call()
    assert call_unary(servicer.CreateSession, iter([pb.CreateSessionRequest(voxels=b"\0")]), call) is None
    assert call.bad_field() == "header"
    long_label = Call()
    assert create(servicer, volume(), "", long_label, label="x" * 300) is None
    assert long_label.code() is grpc.StatusCode.INVALID_ARGUMENT and "header.label" in long_label.details()
    overflow = pb.StudyHeader(shape=[2**32 - 1] * 3, dtype=pb.DATA_TYPE_FLOAT64)  # more voxels than an int64 holds
    call = Call()
    assert call_unary(servicer.CreateSession, iter([pb.CreateSessionRequest(header=overflow)]), call) is None
    assert call.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and str((2**32 - 1) ** 3) in call.details()
    assert servicer.ListSessions(pb.ListSessionsRequest(), Call()).sessions == []


def test_more_clicks_than_the_graphs_take_are_refused(tmp_path: Path) -> None:
    servicer = make_servicer(None, tmp_path)
    sid = _session(servicer)
    clicks = [pb.Point(x=1 + k % 60, y=1 + k // 60, positive=True) for k in range(MAX_POINTS + 1)]
    call = Call()
    assert call_unary(servicer.AddPrompt, pb.AddPromptRequest(session_id=sid, object_id=1, points=clicks), call) is None
    assert call.code() is grpc.StatusCode.INVALID_ARGUMENT and call.info().reason == "INVALID_PROMPT"
    assert call.bad_field() == "points" and f"at most {MAX_POINTS}" in call.details()
    assert list(_describe(servicer, sid).object_ids) == []


def test_server_info_states_the_limits_and_chunks_respect_the_message_size(tmp_path: Path) -> None:
    limits = Limits(max_sessions=3, max_study_voxels=10**7, max_state_bytes=2**30, idle_ttl_s=120.0)
    servicer = make_servicer(None, tmp_path, limits=limits, max_message_bytes=8 * 1024 + 4096)
    info = servicer.GetServerInfo(pb.GetServerInfoRequest(), Call())
    assert (info.limits.max_sessions, info.limits.max_study_voxels, info.limits.max_state_bytes) == (3, 10**7, 2**30)
    assert (info.limits.session_ttl_seconds, info.limits.max_points) == (120.0, MAX_POINTS)
    assert info.limits.max_message_bytes == 8 * 1024 + 4096 and info.backend == "fake"
    assert "save-annotation" not in info.capabilities and "pacs" not in info.capabilities
    sid = _session(servicer)
    call_unary(servicer.AddPrompt, box_prompt(sid), Call())
    request = pb.GetResultRequest(session_id=sid, format=pb.RESULT_FORMAT_RAW_LABELS, chunk_bytes=1 << 20)
    chunks = call_stream(servicer.GetResult, request, Call())
    assert chunks is not None and len(chunks) > 1
    assert max(len(c.data) for c in chunks) == 8 * 1024  # the message size less room for the chunk's fields
    assert sum(len(c.data) for c in chunks) == chunks[0].total_bytes
    assert [c.offset for c in chunks] == [k * 8 * 1024 for k in range(len(chunks))]


def test_a_draining_server_refuses_new_calls_and_ends_streams_at_the_grace_period(tmp_path: Path) -> None:
    clock = Clock()
    drain = Drain(clock)
    servicer = make_servicer(None, tmp_path, drain=drain)
    sid = _session(servicer)
    call_unary(servicer.AddPrompt, box_prompt(sid), Call())
    running = Call()
    stream = servicer.Propagate(pb.PropagateRequest(session_id=sid), running)
    next(stream)
    drain.begin(grace_s=30.0)
    refused = Call()
    assert call_unary(servicer.GetSession, pb.GetSessionRequest(session_id=sid), refused) is None
    assert refused.code() is grpc.StatusCode.UNAVAILABLE and refused.info().reason == "SERVER_SHUTTING_DOWN"
    assert refused.retry_after_s() == 1.0
    next(stream)  # within the grace period the stream goes on
    clock.now += 31
    with pytest.raises(Exception):  # noqa: B017 - the context's abort, as grpc's
        next(stream)
    assert running.code() is grpc.StatusCode.UNAVAILABLE and running.info().reason == "SERVER_SHUTTING_DOWN"
    assert drain.calls == 0, "a call still counted after its stream ended"


def test_closing_a_session_ends_its_running_propagation_within_a_slice(tmp_path: Path) -> None:
    servicer = make_servicer(None, tmp_path)
    sid = _session(servicer)
    call_unary(servicer.AddPrompt, box_prompt(sid), Call())
    running = Call()
    stream = servicer.Propagate(pb.PropagateRequest(session_id=sid), running)
    next(stream)
    assert servicer.CloseSession(pb.CloseSessionRequest(session_id=sid), Call()).closed is True
    rest = []
    with pytest.raises(Exception):  # noqa: B017 - the context's abort, as grpc's
        rest.extend(stream)
    assert rest == [] and running.code() is grpc.StatusCode.NOT_FOUND and running.info().reason == "SESSION_CLOSED"
