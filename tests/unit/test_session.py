"""engine.session over the FakeBackend: one interface for the 3D protocol and in-state tracking."""

from __future__ import annotations

import numpy as np
import pytest

from medsam2.engine.prompts import Box
from medsam2.engine.session import (
    Direction,
    ObjectPrompt,
    Plan,
    Session,
    changed_slices,
    open_session,
    session_postprocessing,
)
from medsam2.engine.tracker import TrackerOptions
from medsam2.errors import InvalidInput, PreconditionFailed
from medsam2.testing.fake_backend import FakeBackend

SLICES, SIDE = 7, 64


def _session(*, video: bool) -> Session:
    frames = (np.random.default_rng(0).random((SLICES, SIDE, SIDE)) * 255).astype(np.uint8)
    post = session_postprocessing({}, video=video, fill_hole_area=0)
    return open_session(FakeBackend(), frames, TrackerOptions(), post, video=video)


def _plan(
    session: Session, *, three_d: bool, first: int | None = None, last: int | None = None, start: int | None = None
) -> Plan:
    return session.plan(three_d=three_d, first=first, last=last, direction=Direction.BOTH, start=start)


@pytest.mark.parametrize(("three_d", "video"), [(True, False), (False, False), (False, True)])
def test_a_plan_counts_exactly_what_its_propagation_yields(*, three_d: bool, video: bool) -> None:
    session = _session(video=video)
    session.add_prompt(ObjectPrompt(1, 3, box=Box(8, 8, 40, 24)), keep_previous_points=False, correction=False)
    plan = _plan(session, three_d=three_d, first=1, last=5)
    yielded = list(session.propagate(plan))
    assert plan.total == len(yielded) > 0
    assert {r.frame for _, r in yielded} == set(range(1, 6))
    assert session.describe().shape == (SLICES, SIDE, SIDE)
    assert session.describe().object_ids == [1]


def test_the_3d_protocol_masks_replace_the_streamed_ones_only_where_they_differ() -> None:
    session = _session(video=False)
    session.add_prompt(ObjectPrompt(1, 3, box=Box(8, 8, 40, 24)), keep_previous_points=False, correction=False)
    plan = _plan(session, three_d=True)
    assert plan.three_d and not plan.final  # the largest-component step may still change a streamed mask
    streamed = np.zeros((SLICES, SIDE, SIDE), bool)
    for _, result in session.propagate(plan):
        streamed[result.frame] = session.result_masks(result)[0]
    masks = session.masks()
    changed = changed_slices({1: streamed}, masks)
    expected = {int(f) for f in np.flatnonzero((streamed != masks[1]).any(axis=(1, 2)))}
    assert set(changed) == expected
    assert all(np.array_equal(m[1], masks[1][f]) for f, m in changed.items())


def test_a_video_has_no_3d_protocol_and_an_empty_session_nothing_to_propagate() -> None:
    video = _session(video=True)
    with pytest.raises(InvalidInput, match="3D protocol is for volumes"):
        _plan(video, three_d=True)
    with pytest.raises(PreconditionFailed, match="no prompts yet"):
        _plan(video, three_d=False)
    with pytest.raises(PreconditionFailed, match="no prompts yet"):
        _plan(_session(video=False), three_d=True)


def test_a_volume_switches_to_in_state_once_and_stays() -> None:
    session = _session(video=False)
    session.add_prompt(ObjectPrompt(1, 3, box=Box(8, 8, 40, 24)), keep_previous_points=False, correction=False)
    plan = _plan(session, three_d=False)
    assert not plan.three_d and plan.final
    list(session.propagate(plan))
    assert session.masks() == {}  # in-state: the streamed masks are the result
    with pytest.raises(InvalidInput, match="3D protocol is for volumes"):
        _plan(session, three_d=True)


def test_a_propagated_volume_refuses_to_switch_to_in_state() -> None:
    session = _session(video=False)
    session.add_prompt(ObjectPrompt(1, 3, box=Box(8, 8, 40, 24)), keep_previous_points=False, correction=False)
    list(session.propagate(_plan(session, three_d=True)))
    with pytest.raises(InvalidInput, match="were propagated with the MedSAM2 3D protocol"):
        _plan(session, three_d=False)


def test_slice_ranges_and_start_slices_are_checked_before_anything_runs() -> None:
    session = _session(video=True)
    session.add_prompt(ObjectPrompt(1, 3, box=Box(8, 8, 40, 24)), keep_previous_points=False, correction=False)
    with pytest.raises(InvalidInput, match="does not fit the study's 7 slices"):
        _plan(session, three_d=False, first=2, last=SLICES)
    with pytest.raises(InvalidInput, match="start slice 1 is outside the slice range 2,5"):
        _plan(session, three_d=False, first=2, last=5, start=1)
