"""The tracker's and the 3D protocol's bookkeeping over the FakeBackend: no torch, no graphs."""

from __future__ import annotations

import numpy as np
import pytest

from medsam2.engine.prompts import Box
from medsam2.engine.protocols import ObjectPrompt, segment_video, segment_volume, volume_protocol_length
from medsam2.engine.tracker import Direction, Tracker
from medsam2.errors import InvalidInput, InvalidPrompt
from medsam2.graphs import Stage
from medsam2.testing.fake_backend import FakeBackend

SLICES, SIDE = 7, 64


@pytest.fixture()
def volume() -> np.ndarray:
    return (np.random.default_rng(0).random((SLICES, SIDE, SIDE)) * 255).astype(np.uint8)


def test_box_on_key_slice_segments_inside_the_box(volume: np.ndarray) -> None:
    tracker = Tracker(FakeBackend(), volume)
    result = tracker.add_prompt(1, 3, box=Box(8, 8, 40, 24))
    mask = result.masks(SIDE, SIDE)[0]
    rows, cols = np.nonzero(mask)
    assert 7 <= rows.min() and rows.max() <= 25 and 7 <= cols.min() and cols.max() <= 41
    assert mask.sum() > 0.8 * 33 * 17


def test_volume_protocol_covers_the_range_once_per_pass_and_encodes_each_slice_once(volume: np.ndarray) -> None:
    backend = FakeBackend()
    tracker = Tracker(backend, volume)
    prompts = [ObjectPrompt(1, 3, box=Box(8, 8, 40, 24))]
    masks = segment_volume(tracker, prompts, (1, 5))
    per_slice = masks[1].sum(axis=(1, 2))
    assert per_slice[0] == 0 and per_slice[6] == 0, "slices outside the range stay empty"
    assert (per_slice[1:6] > 0).all(), "the fake carries the mask through memory to every slice in range"
    assert backend.calls[Stage.IMAGE_ENCODER] == 5, "each slice in range is encoded once over both passes"
    assert volume_protocol_length(tracker, prompts, (1, 5)) == (5 - 3 + 1) + (3 - 1 + 1)


def test_absent_object_gives_empty_tracked_slices(volume: np.ndarray) -> None:
    tracker = Tracker(FakeBackend(object_score=-5.0), volume)
    tracker.add_prompt(1, 0, box=Box(8, 8, 40, 24))
    tracked = list(tracker.propagate(Direction.FORWARD, start=0))
    assert [r.frame for r in tracked] == list(range(SLICES))
    assert all(r.masks(SIDE, SIDE).sum() == 0 for r in tracked[1:])


def test_negative_click_on_a_tracked_slice_removes_pixels(volume: np.ndarray) -> None:
    tracker = Tracker(FakeBackend(), volume)
    tracker.add_prompt(1, 0, box=Box(8, 8, 40, 40))
    before = {r.frame: r.masks(SIDE, SIDE)[0] for r in tracker.propagate(Direction.FORWARD, start=0)}
    corrected = tracker.add_prompt(1, 4, points=np.array([[24.0, 24.0]]), labels=np.array([0]))
    after = corrected.masks(SIDE, SIDE)[0]
    assert before[4][24, 24] and not after[24, 24]
    assert after.sum() < before[4].sum()


@pytest.mark.parametrize(
    ("prompt", "error", "match"),
    [
        (ObjectPrompt(1, SLICES, box=Box(1, 1, 5, 5)), InvalidInput, "slice"),
        (ObjectPrompt(1, 0, box=Box(5, 5, 1, 1)), InvalidPrompt, "box"),
        (ObjectPrompt(1, 0, box=Box(1, 1, 500, 5)), InvalidPrompt, "outside"),
    ],
)
def test_bad_prompts_are_refused_before_anything_runs(
    volume: np.ndarray, prompt: ObjectPrompt, error: type[Exception], match: str
) -> None:
    backend = FakeBackend()
    tracker = Tracker(backend, volume)
    with pytest.raises(error, match=match):
        segment_volume(tracker, [prompt])
    assert backend.calls == {} and tracker.objects == {}


def test_video_protocol_refuses_prompts_after_the_first_frame(volume: np.ndarray) -> None:
    tracker = Tracker(FakeBackend(), volume)
    with pytest.raises(InvalidPrompt, match="first frame"):
        segment_video(tracker, [ObjectPrompt(1, 2, box=Box(1, 1, 9, 9))])
