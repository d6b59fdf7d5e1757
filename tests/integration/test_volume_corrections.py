"""VolumeAnnotation over the real exported graphs: the 3D protocol, corrections, restarts and bad input.

The reference for a correction is the tracker driven step by step as a sam2
session would be (parity-tested against sam2 in test_parity): key prompt,
propagate that side, the correction on the tracked slice, resume one slice further.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medsam2.backends.onnxruntime_backend import OnnxRuntimeBackend
from medsam2.engine.components import largest_component
from medsam2.engine.prompts import Box
from medsam2.engine.protocols import PASS_CORRECTION, ObjectPrompt, VolumeAnnotation, iter_volume, segment_volume
from medsam2.engine.tracker import Direction, Tracker
from medsam2.errors import InvalidInput, InvalidPrompt, NotFound, PreconditionFailed
from medsam2_export.parity import synthetic_volume

SLICES, ROWS, COLS, KEY = 8, 64, 72, 4


@pytest.fixture(scope="module")
def study() -> tuple[np.ndarray, list[Box]]:
    return synthetic_volume(seed=5, slices=SLICES, height=ROWS, width=COLS)


@pytest.fixture(scope="module")
def tracker(graphs: dict[str, Path], study) -> Tracker:
    # One tracker for the module: its feature cache spares re-encoding; every protocol resets its objects.
    return Tracker(OnnxRuntimeBackend(graphs["present"], threads=2), study[0])


def _click(box: Box, positive: bool = False) -> tuple[np.ndarray, np.ndarray]:
    return np.array([[(box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2]]), np.array([1 if positive else 0])


def _propagated(tracker: Tracker, box: Box, *, largest: bool = False) -> VolumeAnnotation:
    annotation = VolumeAnnotation(tracker, keep_largest_component=largest)
    annotation.add_prompt(ObjectPrompt(1, KEY, box=box))
    list(annotation.propagate())
    return annotation


def test_uncorrected_objects_equal_segment_volume(tracker, study) -> None:
    _, boxes = study
    prompts = [ObjectPrompt(1, KEY, box=boxes[0]), ObjectPrompt(2, KEY + 1, box=boxes[1])]
    expected = segment_volume(tracker, prompts)
    # The same passes, except that the backward pass does not repeat its key slice (the forward pass sent it).
    keys = {p.frame for p in prompts}
    expected_passes = [
        (name, r.frame, r.obj_ids)
        for name, r in iter_volume(tracker, prompts)
        if not (
            name == "backward"
            and r.frame in keys
            and r.obj_ids == tuple(p.obj_id for p in prompts if p.frame == r.frame)
        )
    ]
    annotation = VolumeAnnotation(tracker, keep_largest_component=False)
    for prompt in prompts:
        annotation.add_prompt(prompt)
    planned = annotation.planned_slices()
    passes = [(name, r.frame, r.obj_ids) for name, r in annotation.propagate()]
    assert passes == expected_passes and planned == len(passes)
    got = annotation.masks()
    assert set(got) == {1, 2}
    for obj_id in (1, 2):
        assert np.array_equal(got[obj_id], expected[obj_id])
    assert annotation.is_propagated(1) and not tracker.objects  # the tracker is left reset
    assert list(annotation.propagate()) == []  # nothing pending: nothing re-tracked


def test_correction_retracks_away_from_the_key_slice_only(tracker, study) -> None:
    _, boxes = study
    annotation = _propagated(tracker, boxes[0])
    before = annotation.masks()[1]
    points, labels = _click(boxes[0])
    fix = KEY + 2
    reply = annotation.add_prompt(ObjectPrompt(1, fix, points=points, labels=labels))
    assert reply.frame == fix and reply.obj_ids == (1,)
    assert np.array_equal(annotation.masks()[1], before)  # nothing changes before the next propagate
    assert annotation.planned_slices() == 1 + (SLICES - 1 - fix)
    passes = [(name, r.frame) for name, r in annotation.propagate()]
    assert passes == [(PASS_CORRECTION, fix)] + [("forward", z) for z in range(fix + 1, SLICES)]
    after = annotation.masks()[1]
    assert np.array_equal(after[:fix], before[:fix])  # the key side of the correction is untouched
    assert not np.array_equal(after[fix], before[fix])  # a negative click in the middle changes the slice

    # The same steps on the tracker, as a sam2 session does them.
    tracker.reset()
    tracker.add_prompt(1, KEY, box=boxes[0])
    list(tracker.propagate(Direction.FORWARD, start=KEY, limit=SLICES - 1 - KEY))
    tracker.add_prompt(1, fix, points=points, labels=labels)
    direct = {r.frame: r.masks(ROWS, COLS)[0] for r in tracker.propagate(Direction.FORWARD, start=fix + 1)}
    direct[fix] = tracker.result(fix).masks(ROWS, COLS)[0]
    tracker.reset()
    for z, mask in direct.items():
        assert np.array_equal(after[z], mask), z


def test_backward_correction_reaches_slice_zero_and_chains(tracker, study) -> None:
    _, boxes = study
    annotation = _propagated(tracker, boxes[0])
    before = annotation.masks()[1]
    points, labels = _click(boxes[0])
    annotation.add_prompt(ObjectPrompt(1, 1, points=points, labels=labels))
    annotation.add_prompt(ObjectPrompt(1, 3, points=points + 3, labels=np.array([1])))
    annotation.add_prompt(ObjectPrompt(1, 1, points=points + 1, labels=np.array([0])), keep_previous_points=True)
    assert [p.frame for p in annotation.pending_corrections(1)] == [1, 3, 1]
    planned = annotation.planned_slices()
    passes = [(name, r.frame) for name, r in annotation.propagate()]
    # Outward from the key: slice 3, re-tracked to slice 2, then slice 1 (both clicks), re-tracked to slice 0.
    assert passes == [(PASS_CORRECTION, 3), ("backward", 2), (PASS_CORRECTION, 1), ("backward", 0)]
    assert planned == len(passes)
    after = annotation.masks()[1]
    assert np.array_equal(after[KEY:], before[KEY:])  # the key slice and the forward side are untouched
    assert annotation.pending_corrections(1) == []


def test_prompt_on_the_key_slice_restarts_the_object(tracker, study) -> None:
    _, boxes = study
    annotation = _propagated(tracker, boxes[0])
    points, labels = _click(boxes[0])
    annotation.add_prompt(ObjectPrompt(1, KEY + 1, points=points, labels=labels))
    annotation.add_prompt(ObjectPrompt(1, KEY, box=boxes[1]))
    assert not annotation.is_propagated(1) and annotation.pending_corrections(1) == []
    assert annotation.planned_slices() == (SLICES - KEY) + KEY  # the key slice once
    expected = segment_volume(tracker, [ObjectPrompt(1, KEY, box=boxes[1])])
    list(annotation.propagate())
    assert np.array_equal(annotation.masks()[1], expected[1])
    assert [p.frame for p in annotation.prompts()[1]] == [KEY, KEY + 1, KEY]  # the journal keeps everything


def test_bad_corrections_change_nothing(tracker, study) -> None:
    _, boxes = study
    annotation = _propagated(tracker, boxes[0])
    masks, journal = annotation.masks(), annotation.prompts()
    points, labels = _click(boxes[0])
    with pytest.raises(NotFound, match=r"correction for unknown object 7: known object ids are \[1\]"):
        annotation.add_prompt(ObjectPrompt(7, 2, points=points, labels=labels), correction=True)
    with pytest.raises(InvalidPrompt, match="outside the 72x64 slice"):
        annotation.add_prompt(ObjectPrompt(1, 2, points=np.array([[500.0, 3.0]]), labels=np.array([0])))
    with pytest.raises(InvalidPrompt, match="slice 9 is out of range"):
        annotation.add_prompt(ObjectPrompt(1, 9, points=points, labels=labels))
    with pytest.raises(InvalidPrompt, match="too many points on one slice: 17"):
        annotation.add_prompt(ObjectPrompt(1, 2, points=np.repeat(points, 17, axis=0), labels=np.zeros(17)))
    with pytest.raises(NotFound, match=r"unknown object ids \[3\]"):
        annotation.reset([1, 3])
    annotation.add_prompt(ObjectPrompt(1, 6, points=points, labels=labels))
    with pytest.raises(InvalidInput, match="correction on slice 6 of object 1 is outside the slice range 0,5"):
        annotation.propagate((0, 5))
    with pytest.raises(InvalidInput, match="reversed"):
        annotation.propagate((5, 0))
    assert annotation.object_ids == [1] and len(annotation.pending_corrections(1)) == 1
    assert len(annotation.prompts()[1]) == len(journal[1]) + 1
    assert np.array_equal(annotation.masks()[1], masks[1])
    annotation.add_prompt(ObjectPrompt(1, 2, points=np.repeat(points, 10, axis=0), labels=np.zeros(10)))
    with pytest.raises(InvalidPrompt, match="too many points on slice 2: 17 .a box counts 2., at most 16"):
        annotation.add_prompt(
            ObjectPrompt(1, 2, points=np.repeat(points, 7, axis=0), labels=np.zeros(7)), keep_previous_points=True
        )
    assert len(annotation.pending_corrections(1)) == 2
    with pytest.raises(PreconditionFailed, match="no prompts yet"):
        VolumeAnnotation(tracker).propagate()
    fresh = VolumeAnnotation(tracker)
    fresh.add_prompt(ObjectPrompt(1, KEY, box=boxes[0]))
    with pytest.raises(PreconditionFailed, match="not been propagated"):
        fresh.add_prompt(ObjectPrompt(1, 2, points=points, labels=labels), correction=True)


def test_interrupted_propagation_keeps_the_previous_state(tracker, study) -> None:
    _, boxes = study
    annotation = VolumeAnnotation(tracker)
    annotation.add_prompt(ObjectPrompt(1, KEY, box=boxes[0]))
    stream = annotation.propagate()
    next(stream)
    stream.close()  # a cancelled Propagate
    assert not annotation.is_propagated(1) and not annotation.masks()[1].any()
    assert not tracker.objects
    assert annotation.planned_slices() == len(list(annotation.propagate()))


def test_largest_component_is_kept_by_default(tracker, study) -> None:
    _, boxes = study
    raw = _propagated(tracker, boxes[0]).masks()[1]
    annotation = VolumeAnnotation(tracker)
    annotation.add_prompt(ObjectPrompt(1, KEY, box=boxes[0]))
    list(annotation.propagate())
    kept = annotation.masks()[1]
    assert raw.any() and np.array_equal(kept, largest_component(raw))
