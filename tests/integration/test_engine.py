"""The tracking engine over the real exported graphs: protocols, caching, early stop and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medsam2.backends.onnxruntime_backend import OnnxRuntimeBackend
from medsam2.engine.mask_choice import NO_OBJECT_SCORE
from medsam2.engine.prompts import Box
from medsam2.engine.protocols import ObjectPrompt, segment_video, segment_volume
from medsam2.engine.tracker import Direction, Tracker, TrackerOptions
from medsam2.errors import InvalidInput, InvalidPrompt, NotFound, PreconditionFailed
from medsam2_export.parity import synthetic_volume


@pytest.fixture(scope="module")
def volume() -> tuple[np.ndarray, list[Box]]:
    return synthetic_volume(seed=5, slices=8, height=64, width=72)


@pytest.fixture(scope="module")
def backend(graphs: dict[str, Path]) -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend(graphs["present"], threads=2)


@pytest.fixture(scope="module")
def absent_backend(graphs: dict[str, Path]) -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend(graphs["absent"], threads=2)


def test_3d_protocol_encodes_each_slice_once(backend, volume) -> None:
    frames, boxes = volume
    tracker = Tracker(backend, frames)
    seen: list[tuple[str, int]] = []
    masks = segment_volume(
        tracker,
        [ObjectPrompt(1, 4, box=boxes[0]), ObjectPrompt(2, 4, box=boxes[1])],
        on_frame=lambda name, r: seen.append((name, r.frame)),
    )
    assert tracker.features.encoded == frames.shape[0]  # the key slice is not encoded twice
    assert [f for n, f in seen if n == "forward"] == [4, 5, 6, 7]
    assert [f for n, f in seen if n == "backward"] == [4, 3, 2, 1, 0]
    assert set(masks) == {1, 2} and masks[1].shape == frames.shape
    # The present-biased checkpoint predicts something on every tracked slice.
    assert all(masks[1][z].any() for z in range(frames.shape[0]))
    assert not tracker.objects  # the protocol leaves the tracker reset


def test_slice_range_bounds_propagation(backend, volume) -> None:
    frames, boxes = volume
    tracker = Tracker(backend, frames)
    masks = segment_volume(tracker, [ObjectPrompt(1, 4, box=boxes[0])], slice_range=(3, 5))
    touched = [z for z in range(frames.shape[0]) if masks[1][z].any()]
    assert touched and min(touched) >= 3 and max(touched) <= 5


def test_video_protocol_runs_forward_from_frame_zero(backend, volume) -> None:
    frames, boxes = volume
    seen = []
    segment_video(
        Tracker(backend, frames), [ObjectPrompt(1, 0, box=boxes[0])], on_frame=lambda name, r: seen.append(r.frame)
    )
    assert seen == list(range(frames.shape[0]))
    with pytest.raises(InvalidPrompt, match="first frame"):
        segment_video(Tracker(backend, frames), [ObjectPrompt(1, 2, box=boxes[0])])


def test_early_stop_on_absent_object(absent_backend, volume) -> None:
    frames, boxes = volume
    tracker = Tracker(absent_backend, frames, TrackerOptions(early_stop_absent=2))
    tracker.add_prompt(1, 1, box=boxes[0])
    results = list(tracker.propagate(Direction.FORWARD, start=1))
    # This checkpoint finds the object absent everywhere, the prompted slice included: two slices stop it.
    assert [r.frame for r in results] == [1, 2]
    assert all(np.all(r.low_res == NO_OBJECT_SCORE) for r in results)
    assert 3 not in tracker.objects[1].non_cond


def test_no_early_stop_by_default(absent_backend, volume) -> None:
    frames, boxes = volume
    tracker = Tracker(absent_backend, frames)
    tracker.add_prompt(1, 1, box=boxes[0])
    frames_seen = [r.frame for r in tracker.propagate(Direction.FORWARD, start=1)]
    assert frames_seen == list(range(1, frames.shape[0]))


def test_reset_one_object_keeps_the_other(backend, volume) -> None:
    frames, boxes = volume
    tracker = Tracker(backend, frames)
    tracker.add_prompt(1, 2, box=boxes[0])
    tracker.add_prompt(2, 2, box=boxes[1])
    tracker.reset(1)
    assert list(tracker.objects) == [2]
    with pytest.raises(NotFound, match="unknown object id 7"):
        tracker.reset(7)
    assert list(tracker.objects) == [2]


def test_correction_as_conditioning_option(backend, volume) -> None:
    frames, boxes = volume
    tracker = Tracker(backend, frames, TrackerOptions(corrections_as_conditioning=True))
    tracker.add_prompt(1, 2, box=boxes[0])
    list(tracker.propagate(Direction.FORWARD, start=2))
    tracker.add_prompt(1, 5, points=np.array([[30.0, 20.0]]), labels=np.array([0]), clear_old=False)
    list(tracker.propagate(Direction.FORWARD, start=6))
    assert set(tracker.objects[1].cond) == {2, 5}
    assert 5 not in tracker.objects[1].non_cond


def _snapshot(tracker: Tracker) -> dict:
    return {
        obj: (
            sorted(t.points),
            sorted(t.cond),
            sorted(t.non_cond),
            sorted(t.pending_cond),
            {f: o.low_res.copy() for f, o in t.pending_cond.items()},
        )
        for obj, t in tracker.objects.items()
    }


def _same(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for k in a:
        if a[k][:4] != b[k][:4] or a[k][4].keys() != b[k][4].keys():
            return False
        if any(not np.array_equal(a[k][4][f], b[k][4][f]) for f in a[k][4]):
            return False
    return True


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda t, b: t.add_prompt(1, 3, box=Box(10, 10, 10, 30)), InvalidPrompt, "is empty"),
        (lambda t, b: t.add_prompt(1, 3, box=Box(10, 10, 80, 30)), InvalidPrompt, "outside the 72x64 slice"),
        (lambda t, b: t.add_prompt(1, 3, box=Box(-1, 10, 20, 30)), InvalidPrompt, "outside"),
        (lambda t, b: t.add_prompt(1, 8, box=b[0]), InvalidPrompt, "slice 8 is out of range"),
        (lambda t, b: t.add_prompt(1, -1, box=b[0]), InvalidPrompt, "out of range"),
        (lambda t, b: t.add_mask(1, 3, np.ones((64, 71), bool)), InvalidPrompt, r"mask has shape \(64, 71\)"),
        (lambda t, b: t.add_mask(1, 3, np.zeros((64, 72), bool)), InvalidPrompt, "mask is empty"),
        (lambda t, b: t.add_prompt(1, 3, points=np.array([[5.0, 5.0]]), labels=np.array([2])), InvalidPrompt, "labels"),
        (lambda t, b: t.reset(42), NotFound, "unknown object id 42"),
        (lambda t, b: t.propagate(Direction.FORWARD, start=99).__next__(), InvalidPrompt, "slice 99"),
    ],
)
def test_bad_input_leaves_state_untouched(backend, volume, call, error, message) -> None:
    frames, boxes = volume
    tracker = Tracker(backend, frames)
    tracker.add_prompt(1, 2, box=boxes[0])
    before = _snapshot(tracker)
    with pytest.raises(error, match=message):
        call(tracker, boxes)
    assert _same(before, _snapshot(tracker))


def test_propagating_before_any_prompt(backend, volume) -> None:
    tracker = Tracker(backend, volume[0])
    with pytest.raises(PreconditionFailed, match="no prompts yet"):
        next(tracker.propagate())
    assert not tracker.objects


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        (np.zeros((0, 32, 32), np.uint8), "zero slices"),
        (np.zeros((3, 32, 32), np.float32), "uint8"),
        (np.zeros((32, 32), np.uint8), r"\[slices, rows, columns\]"),
    ],
)
def test_bad_frames(backend, frames, message) -> None:
    with pytest.raises(InvalidInput, match=message):
        Tracker(backend, frames)


def test_fused_track_step_matches_stage_by_stage(backend, volume) -> None:
    from medsam2.testing.composed_backend import ComposedTrackStep

    frames, boxes = volume
    results = []
    for b in (backend, ComposedTrackStep(backend)):
        tracker = Tracker(b, frames)
        tracker.add_prompt(1, 2, box=boxes[0])
        tracker.add_prompt(2, 2, box=boxes[1])
        results.append([r.low_res for r in tracker.propagate(Direction.BOTH, start=2)])
        assert tracker.features.encoded == (1 if b is not backend else frames.shape[0])
    assert len(results[0]) == len(results[1]) == frames.shape[0] + 1
    for plain, fused in zip(*results, strict=False):
        assert np.max(np.abs(plain - fused)) <= 1e-5
