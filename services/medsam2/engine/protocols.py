"""The two ways MedSAM2 is used, each as one operation on a ``Tracker``.

- 3D (CT, MR, PET): a box (or mask) on a key slice per object; propagate forward,
  reset, prompt again, propagate backward; the union of both passes is the
  object's mask.  Objects are grouped by key slice, which gives the same numbers
  as MedSAM2's one-lesion-at-a-time script while batching lesions that share a slice.
- video: prompts on the first frame, then forward.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from medsam2.engine.prompts import Box, check_frame, check_mask, to_model_points
from medsam2.engine.tracker import Direction, FrameResult, Tracker
from medsam2.errors import InvalidInput, InvalidPrompt

FrameCallback = Callable[[str, FrameResult], None]
"""Called with the pass name ("forward"/"backward") and each frame's result, e.g. for a progress bar."""


@dataclass(frozen=True, slots=True)
class ObjectPrompt:
    """One object's prompt on its key slice: a box, clicks, or a mask."""

    obj_id: int
    frame: int
    box: Box | None = None
    points: np.ndarray | None = None
    labels: np.ndarray | None = None
    mask: np.ndarray | None = None


def apply_prompt(tracker: Tracker, prompt: ObjectPrompt) -> FrameResult:
    """Give one prompt to the tracker."""
    if prompt.mask is not None:
        if prompt.box is not None or prompt.points is not None:
            raise InvalidPrompt(f"object {prompt.obj_id}: give either a mask or a box/points, not both")
        return tracker.add_mask(prompt.obj_id, prompt.frame, prompt.mask)
    return tracker.add_prompt(prompt.obj_id, prompt.frame, box=prompt.box, points=prompt.points, labels=prompt.labels)


def iter_volume(
    tracker: Tracker, prompts: Sequence[ObjectPrompt], slice_range: tuple[int, int] | None = None
) -> Iterator[tuple[str, FrameResult]]:
    """MedSAM2's 3D protocol, one (pass name, frame result) at a time; the caller merges the passes."""
    groups = _check_prompts(tracker, prompts, slice_range)
    first, last = slice_range if slice_range is not None else (0, tracker.num_frames - 1)
    for key, group in sorted(groups.items()):
        for direction, limit in ((Direction.FORWARD, last - key), (Direction.BACKWARD, key - first)):
            tracker.reset()
            for prompt in group:
                apply_prompt(tracker, prompt)
            for result in tracker.propagate(direction, start=key, limit=limit):
                yield direction.value, result
    tracker.reset()


def volume_protocol_length(tracker: Tracker, prompts: Sequence[ObjectPrompt],
                           slice_range: tuple[int, int] | None = None) -> int:
    """How many frame results ``iter_volume`` yields (for progress reporting)."""
    first, last = slice_range if slice_range is not None else (0, tracker.num_frames - 1)
    keys = {p.frame for p in prompts}
    return sum((last - key + 1) + (key - first + 1 if key > 0 else 0) for key in keys)


def segment_volume(
    tracker: Tracker,
    prompts: Sequence[ObjectPrompt],
    slice_range: tuple[int, int] | None = None,
    on_frame: FrameCallback | None = None,
) -> dict[int, np.ndarray]:
    """MedSAM2's 3D protocol; returns each object's boolean mask [slices, rows, columns]."""
    shape = (tracker.num_frames, tracker.height, tracker.width)
    masks = {p.obj_id: np.zeros(shape, bool) for p in prompts}
    for pass_name, result in iter_volume(tracker, prompts, slice_range):
        _merge(masks, result, tracker)
        if on_frame is not None:
            on_frame(pass_name, result)
    return masks


def segment_video(
    tracker: Tracker, prompts: Sequence[ObjectPrompt], on_frame: FrameCallback | None = None
) -> dict[int, np.ndarray]:
    """The video protocol: prompts on the first frame, then forward; boolean masks per object."""
    if any(p.frame != 0 for p in prompts):
        raise InvalidPrompt("the video protocol takes prompts on the first frame (frame 0) only")
    _check_prompts(tracker, prompts, None)
    masks = {p.obj_id: np.zeros((tracker.num_frames, tracker.height, tracker.width), bool) for p in prompts}
    tracker.reset()
    for prompt in prompts:
        apply_prompt(tracker, prompt)
    for result in tracker.propagate(Direction.FORWARD, start=0):
        _merge(masks, result, tracker)
        if on_frame is not None:
            on_frame("forward", result)
    return masks


def _check_prompts(
    tracker: Tracker, prompts: Sequence[ObjectPrompt], slice_range: tuple[int, int] | None
) -> dict[int, list[ObjectPrompt]]:
    if not prompts:
        raise InvalidPrompt("no prompts: give at least one object a box, points or a mask")
    ids = [p.obj_id for p in prompts]
    if len(set(ids)) != len(ids):
        raise InvalidPrompt(f"object ids must be unique, got {ids}")
    if slice_range is not None:
        first, last = slice_range
        check_frame(first, tracker.num_frames)
        check_frame(last, tracker.num_frames)
        if first > last:
            raise InvalidInput(f"slice range {first},{last} is reversed: first must be <= last")
    groups: dict[int, list[ObjectPrompt]] = {}
    for prompt in prompts:
        check_frame(prompt.frame, tracker.num_frames)
        if slice_range is not None and not slice_range[0] <= prompt.frame <= slice_range[1]:
            raise InvalidInput(f"key slice {prompt.frame} is outside the slice range {slice_range[0]},{slice_range[1]}")
        # Validate every prompt before any state changes.
        if prompt.mask is not None:
            check_mask(prompt.mask, tracker.height, tracker.width)
        else:
            to_model_points(tracker.height, tracker.width, prompt.box, prompt.points, prompt.labels)
        groups.setdefault(prompt.frame, []).append(prompt)
    return groups


def _merge(masks: dict[int, np.ndarray], result: FrameResult, tracker: Tracker) -> None:
    frame_masks = result.masks(tracker.height, tracker.width)
    for obj_id, mask in zip(result.obj_ids, frame_masks):
        masks[obj_id][result.frame] |= mask
