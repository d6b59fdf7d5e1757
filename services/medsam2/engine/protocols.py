"""The two ways MedSAM2 is used, each as one operation on a ``Tracker``.

- 3D (CT, MR, PET): a box (or mask) on a key slice per object; propagate forward,
  reset, prompt again, propagate backward; the union of both passes is the
  object's mask.  Objects are grouped by key slice, which gives the same numbers
  as MedSAM2's one-lesion-at-a-time script while batching lesions that share a slice.
- video: prompts on the first frame, then forward.

``VolumeAnnotation`` is the 3D protocol with corrections for one study: the
single source of truth for an annotation's prompts and masks, used by
``medsam2 segment``, actions files and the service alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from medsam2.engine.components import largest_component
from medsam2.engine.mask_choice import NO_OBJECT_SCORE
from medsam2.engine.overlap import apply_non_overlapping
from medsam2.engine.prompts import Box, check_frame, check_mask, to_model_points
from medsam2.engine.resize import resize_bilinear
from medsam2.engine.tracker import Direction, FrameResult, ObjectTrack, Tracker
from medsam2.errors import InvalidInput, InvalidPrompt, NotFound, PreconditionFailed
from medsam2.graphs import LOW_RES, MAX_POINTS

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


def volume_protocol_length(
    tracker: Tracker, prompts: Sequence[ObjectPrompt], slice_range: tuple[int, int] | None = None
) -> int:
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
    for obj_id, mask in zip(result.obj_ids, frame_masks, strict=False):
        masks[obj_id][result.frame] |= mask


# -- the 3D protocol with corrections -------------------------------------------------------

PASS_CORRECTION = "correction"
"""Pass name of a corrected slice decoded again during ``VolumeAnnotation.propagate``."""

_SIDES = (Direction.FORWARD, Direction.BACKWARD)
_MASK_CHUNK = 16  # slices upsampled at once when building masks (bounds the float32 scratch)


@dataclass(frozen=True, slots=True)
class _Given:
    """One prompt as given, with how it combines with earlier clicks on its slice."""

    prompt: ObjectPrompt
    keep_previous_points: bool


@dataclass(slots=True)
class _Annotated:
    """One object of a ``VolumeAnnotation``."""

    obj_id: int
    key: list[_Given]
    """The key prompt: what was given on the key slice since its last box or mask (clicks may follow)."""
    passes: dict[Direction, ObjectTrack] = field(default_factory=dict)
    """Per side, the tracker state its last pass left (what a sam2 session holds after that pass)."""
    pending: list[_Given] = field(default_factory=list)
    """Corrections given since the last propagation, in order."""
    journal: list[ObjectPrompt] = field(default_factory=list)

    @property
    def key_frame(self) -> int:
        """The key slice."""
        return self.key[0].prompt.frame

    @property
    def propagated(self) -> bool:
        """Whether the full protocol has run since the key prompt last changed."""
        return bool(self.passes)


@dataclass(frozen=True, slots=True)
class _Retrack:
    """One corrected slice of one object and the stretch re-tracked after it."""

    obj_id: int
    side: Direction
    frame: int
    given: tuple[_Given, ...]
    stop: int  # last slice (inclusive) reached from ``frame`` away from the key; == frame for none

    @property
    def length(self) -> int:
        """Results this step yields: the corrected slice, then every re-tracked slice."""
        return 1 + abs(self.stop - self.frame)


@dataclass(frozen=True, slots=True)
class AnnotationSnapshot:
    """A ``VolumeAnnotation``'s state at one moment (pass states are shared: propagation only replaces them)."""

    objects: dict[int, _Annotated]
    mask_cache: dict[int, np.ndarray]


class VolumeAnnotation:
    """MedSAM2's 3D protocol with corrections, for one study; the single source of truth for prompts.

    Semantics (one meaning for volumes in the engine, ``segment`` and the service):

    - Before an object's first propagation, prompts build its key prompt on one key
      slice: a box or a mask replaces it (a prompt on another slice moves the key
      there); clicks replace it too unless ``keep_previous_points``, then they add.
    - The first ``propagate`` runs MedSAM2's protocol from the key slice: forward,
      reset, the key prompt again, backward.  Objects sharing a key slice are
      batched, which changes no number (``segment_volume`` gives the same).
    - After that, a prompt (clicks, a box or a mask) on any slice but the key slice
      is a correction of that slice.  Each object keeps, per side of its key slice,
      the tracker state its last pass left; that is exactly what a sam2 session
      holds after propagating that way, so no slice is tracked twice to rebuild it.
      The next ``propagate`` installs that state, gives the correction to the
      tracker as sam2 does on a tracked frame (decoded with memory, the slice's
      previous logits as a mask prompt, kept as a non-conditioning output), and
      propagates from the next slice away from the key slice, to the end of the
      range or up to the next corrected slice of that side, which is corrected in
      turn.  Only the slices reached are replaced; the key side of each
      correction and the other side of the key slice are untouched.  (sam2
      re-tracks a frame it starts propagating from, so starting one slice further
      keeps the correction, as MedSAM2's parity "resume" step does.)
    - A correction's reply is decoded on the state of the last propagation; the
      next ``propagate`` decodes pending corrections again in order from the key
      slice outward, each on the state the previous re-track left.
    - Any prompt on the key slice after propagation (a box, a mask, or clicks that
      add to the key prompt) restarts the object: its pending corrections are
      dropped and the next ``propagate`` runs the full protocol again.
    - Corrections may come in any number and on both sides; a slice never tracked
      (outside an earlier range) becomes a conditioning frame of its side, as in sam2.

    Every method validates fully before it changes any state; a propagation that is
    interrupted (an error, or a caller that stops iterating) keeps every object as it
    was before it, except those whose re-tracking finished.
    """

    def __init__(self, tracker: Tracker, *, keep_largest_component: bool = True) -> None:
        self.tracker = tracker
        self.keep_largest_component = keep_largest_component
        self._objects: dict[int, _Annotated] = {}
        self._mask_cache: dict[int, np.ndarray] = {}
        self._cached_together: tuple[int, ...] = ()  # objects whose cached masks were constrained together

    # -- prompts ----------------------------------------------------------------------------
    @property
    def object_ids(self) -> list[int]:
        """Every object, in the order of its first prompt."""
        return list(self._objects)

    def key_slice(self, obj_id: int) -> int:
        """The object's key slice."""
        return self._get(obj_id).key_frame

    def is_propagated(self, obj_id: int) -> bool:
        """Whether the object has been propagated since its key prompt last changed."""
        return self._get(obj_id).propagated

    def pending_corrections(self, obj_id: int) -> list[ObjectPrompt]:
        """The object's corrections waiting for the next ``propagate``."""
        return [g.prompt for g in self._get(obj_id).pending]

    def add_prompt(
        self, prompt: ObjectPrompt, *, keep_previous_points: bool = False, correction: bool = False
    ) -> FrameResult:
        """Give one prompt (key prompt, correction or restart, see the class); returns the slice's decoded logits.

        ``keep_previous_points`` adds clicks to the earlier clicks on that slice (sam2's
        ``clear_old_points=False``); a box or a mask always replaces.  ``correction=True``
        demands an existing, propagated object: ``NotFound`` for an unknown id.
        """
        given = _Given(prompt, keep_previous_points and _is_clicks(prompt))
        self._check_prompt(prompt)
        obj = self._objects.get(prompt.obj_id)
        if correction:
            if obj is None:
                raise NotFound(
                    f"correction for unknown object {prompt.obj_id}: known object ids are {self.object_ids or 'none'}",
                    reason="OBJECT_NOT_FOUND",
                    field="object_id",
                )
            if not obj.propagated:
                raise PreconditionFailed(
                    f"object {prompt.obj_id} has not been propagated yet: propagate before correcting a slice",
                    reason="NOT_PROPAGATED",
                    field="correction",
                )
        if obj is None or not obj.propagated or prompt.frame == obj.key_frame:
            return self._set_key(obj, given)
        return self._add_correction(obj, given)

    def _set_key(self, obj: _Annotated | None, given: _Given) -> FrameResult:
        prompt = given.prompt
        adds = obj is not None and given.keep_previous_points and prompt.frame == obj.key_frame
        key = [*obj.key, given] if adds and obj is not None else [_Given(prompt, False)]
        self._check_point_count(prompt.frame, key)
        result = self._decode_key(prompt.obj_id, key)
        if obj is None:
            obj = self._objects[prompt.obj_id] = _Annotated(prompt.obj_id, key)
        obj.key = key
        obj.passes.clear()
        obj.pending.clear()
        obj.journal.append(prompt)
        self._mask_cache.pop(prompt.obj_id, None)
        return result

    def _add_correction(self, obj: _Annotated, given: _Given) -> FrameResult:
        frame = given.prompt.frame
        side = _side(frame, obj.key_frame)
        same_slice = [g for g in obj.pending if g.prompt.frame == frame]
        state = obj.passes[side]
        self._check_point_count(frame, [*same_slice, given], state.points.get(frame))
        self.tracker.reset()
        try:
            self.tracker.objects[obj.obj_id] = _copy_track(state)
            result: FrameResult | None = None
            for earlier in (*same_slice, given):
                result = _apply_given(self.tracker, earlier)
        finally:
            self.tracker.reset()
        assert result is not None
        obj.pending.append(given)
        obj.journal.append(given.prompt)
        return result

    def _decode_key(self, obj_id: int, key: Sequence[_Given]) -> FrameResult:
        self.tracker.reset()
        try:
            result: FrameResult | None = None
            for given in key:
                result = _apply_given(self.tracker, given)
            assert result is not None
            return result
        finally:
            self.tracker.reset()

    def _check_prompt(self, prompt: ObjectPrompt) -> None:
        tracker = self.tracker
        if not isinstance(prompt.obj_id, (int, np.integer)) or isinstance(prompt.obj_id, bool):
            raise InvalidPrompt(f"object id must be an integer, got {prompt.obj_id!r}")
        check_frame(prompt.frame, tracker.num_frames)
        if prompt.mask is not None:
            if prompt.box is not None or prompt.points is not None:
                raise InvalidPrompt(f"object {prompt.obj_id}: give either a mask or a box/points, not both")
            check_mask(prompt.mask, tracker.height, tracker.width)
        else:
            to_model_points(tracker.height, tracker.width, prompt.box, prompt.points, prompt.labels)

    @staticmethod
    def _check_point_count(frame: int, chain: Sequence[_Given], existing: object | None = None) -> None:
        """Refuse a click chain on one slice that would pass the point cap, before anything runs."""
        count = getattr(existing, "count", 0)
        for given in chain:
            prompt = given.prompt
            added = (
                0
                if prompt.mask is not None
                else (2 if prompt.box is not None else 0)
                + (0 if prompt.points is None else int(np.asarray(prompt.points).reshape(-1, 2).shape[0]))
            )
            count = count + added if given.keep_previous_points else added
        if count > MAX_POINTS:
            raise InvalidPrompt(f"too many points on slice {frame}: {count} (a box counts 2), at most {MAX_POINTS}")

    # -- propagation ------------------------------------------------------------------------
    def planned_slices(self, slice_range: tuple[int, int] | None = None) -> int:
        """How many (pass, result) pairs the next ``propagate(slice_range)`` yields (for progress totals)."""
        first, last = self._check_range(slice_range)
        groups, retracks = self._plan(first, last)
        return _count(groups, retracks, first, last)

    def propagate(self, slice_range: tuple[int, int] | None = None) -> Iterator[tuple[str, FrameResult]]:
        """Run what is due: the full protocol for new objects, re-tracking for corrected ones; (pass, result) per slice.

        Objects already propagated and without pending corrections are left as they are.
        Everything is validated before the first slice is tracked.
        """
        return self.plan(slice_range)[1]

    def plan(self, slice_range: tuple[int, int] | None = None) -> tuple[int, Iterator[tuple[str, FrameResult]]]:
        """``planned_slices`` and ``propagate`` from one plan: the count and the run it counts (run it once)."""
        if not self._objects:
            raise PreconditionFailed(
                "no prompts yet: add a box, points or a mask before propagating", reason="NO_PROMPTS"
            )
        first, last = self._check_range(slice_range)
        groups, retracks = self._plan(first, last)
        return _count(groups, retracks, first, last), self._run(groups, retracks, first, last)

    def _run(
        self, groups: dict[int, list[_Annotated]], retracks: dict[int, list[_Retrack]], first: int, last: int
    ) -> Iterator[tuple[str, FrameResult]]:
        tracker = self.tracker
        try:
            for key, group in sorted(groups.items()):
                done: dict[int, dict[Direction, ObjectTrack]] = {obj.obj_id: {} for obj in group}
                for direction, limit in ((Direction.FORWARD, last - key), (Direction.BACKWARD, key - first)):
                    tracker.reset()
                    for obj in group:
                        for given in obj.key:
                            _apply_given(tracker, given)
                    for result in tracker.propagate(direction, start=key, limit=limit):
                        if direction is Direction.BACKWARD and result.frame == key:
                            continue  # the key slice's prompt decoded again: the forward pass yielded it already
                        yield direction.value, result
                    for obj in group:
                        done[obj.obj_id][direction] = tracker.objects[obj.obj_id]
                for obj in group:  # commit only whole objects: an interrupted pass changes nothing
                    obj.passes = done[obj.obj_id]
                    obj.pending.clear()
                    self._mask_cache.pop(obj.obj_id, None)
            for obj_id, steps in retracks.items():
                obj = self._objects[obj_id]
                new_passes = dict(obj.passes)
                for side in _SIDES:
                    side_steps = [s for s in steps if s.side is side]
                    if not side_steps:
                        continue
                    tracker.reset()
                    tracker.objects[obj_id] = _copy_track(obj.passes[side])
                    for step in side_steps:
                        decoded: FrameResult | None = None
                        for given in step.given:
                            decoded = _apply_given(tracker, given)
                        assert decoded is not None
                        yield PASS_CORRECTION, decoded
                        if step.stop != step.frame:
                            direction = side
                            start = step.frame + (1 if side is Direction.FORWARD else -1)
                            for tracked in tracker.propagate(
                                direction, start=start, limit=abs(step.stop - start), reverse_from_zero=True
                            ):
                                yield direction.value, tracked
                    new_passes[side] = tracker.objects[obj_id]
                obj.passes = new_passes
                obj.pending.clear()
                self._mask_cache.pop(obj_id, None)
        finally:
            tracker.reset()

    def _check_range(self, slice_range: tuple[int, int] | None) -> tuple[int, int]:
        if slice_range is None:
            return 0, self.tracker.num_frames - 1
        first, last = slice_range
        check_frame(first, self.tracker.num_frames)
        check_frame(last, self.tracker.num_frames)
        if first > last:
            raise InvalidInput(f"slice range {first},{last} is reversed: first must be <= last")
        return int(first), int(last)

    def _plan(self, first: int, last: int) -> tuple[dict[int, list[_Annotated]], dict[int, list[_Retrack]]]:
        """What ``propagate`` will do, validated against the range before anything runs."""
        groups: dict[int, list[_Annotated]] = {}
        retracks: dict[int, list[_Retrack]] = {}
        for obj in self._objects.values():
            if not obj.propagated:
                if not first <= obj.key_frame <= last:
                    raise InvalidInput(
                        f"key slice {obj.key_frame} of object {obj.obj_id} is outside the slice range {first},{last}"
                    )
                groups.setdefault(obj.key_frame, []).append(obj)
            elif obj.pending:
                retracks[obj.obj_id] = self._plan_corrections(obj, first, last)
        return groups, retracks

    @staticmethod
    def _plan_corrections(obj: _Annotated, first: int, last: int) -> list[_Retrack]:
        steps: list[_Retrack] = []
        for side in _SIDES:
            by_frame: dict[int, list[_Given]] = {}
            for given in obj.pending:
                frame = given.prompt.frame
                if _side(frame, obj.key_frame) is side:
                    if not first <= frame <= last:
                        raise InvalidInput(
                            f"correction on slice {frame} of object {obj.obj_id} is outside the "
                            f"slice range {first},{last}"
                        )
                    by_frame.setdefault(frame, []).append(given)
            outward = sorted(by_frame, key=lambda f: abs(f - obj.key_frame))
            end = last if side is Direction.FORWARD else first
            for i, frame in enumerate(outward):
                stop = end if i + 1 == len(outward) else outward[i + 1] + (-1 if side is Direction.FORWARD else 1)
                steps.append(_Retrack(obj.obj_id, side, frame, tuple(by_frame[frame]), stop))
        return steps

    # -- results ----------------------------------------------------------------------------
    def masks(self) -> dict[int, np.ndarray]:
        """Each object's final boolean mask [slices, rows, columns]: the union of its passes, with corrections.

        The largest 3D connected component (26-connectivity) is kept unless disabled, as
        MedSAM2's script does; an object not propagated yet has an empty mask.
        """
        if self.tracker.options.non_overlapping_objects and len(self._objects) > 1:
            return self._non_overlapping_masks()
        return {obj_id: self._mask(obj) for obj_id, obj in self._objects.items()}

    def _logits(self, obj: _Annotated, frames: Sequence[int]) -> np.ndarray:
        """The object's low-res logits on ``frames`` [F, 128, 128], -1024 where it has no output."""
        out = np.full((len(frames), LOW_RES, LOW_RES), NO_OBJECT_SCORE, np.float32)
        for i, frame in enumerate(frames):
            for side, track in obj.passes.items():
                result = track.output(frame) if _on_side(frame, obj.key_frame, side) else None
                if result is not None:
                    out[i] = result.low_res
                    break
        return out

    def _non_overlapping_masks(self) -> dict[int, np.ndarray]:
        """Every object's mask with sam2's non-overlapping constraint on each slice's upsampled logits."""
        ids = list(self._objects)
        # One object's change moves the others' pixels: the cache holds only while every object's entry does,
        # for the same set of objects (a removed object gives its pixels back).
        if self._cached_together == tuple(ids) and all(obj_id in self._mask_cache for obj_id in ids):
            return {obj_id: self._mask_cache[obj_id].copy() for obj_id in ids}
        tracker = self.tracker
        masks = {obj_id: np.zeros((tracker.num_frames, tracker.height, tracker.width), bool) for obj_id in ids}
        for start in range(0, tracker.num_frames, _MASK_CHUNK):
            chunk = list(range(start, min(start + _MASK_CHUNK, tracker.num_frames)))
            low = np.stack([self._logits(self._objects[obj_id], chunk) for obj_id in ids])  # [K, F, 128, 128]
            logits = apply_non_overlapping(resize_bilinear(low, (tracker.height, tracker.width)))
            for i, obj_id in enumerate(ids):
                masks[obj_id][chunk] = logits[i] > 0
        for obj_id, mask in masks.items():
            if self.keep_largest_component and mask.any():
                masks[obj_id] = largest_component(mask)
            self._mask_cache[obj_id] = masks[obj_id]
        self._cached_together = tuple(ids)
        return {obj_id: mask.copy() for obj_id, mask in masks.items()}

    def _mask(self, obj: _Annotated) -> np.ndarray:
        cached = self._mask_cache.get(obj.obj_id)
        if cached is not None:
            return cached.copy()
        tracker = self.tracker
        mask = np.zeros((tracker.num_frames, tracker.height, tracker.width), bool)
        for side, track in obj.passes.items():
            frames = [
                f for f in range(tracker.num_frames) if _on_side(f, obj.key_frame, side) and track.output(f) is not None
            ]
            for start in range(0, len(frames), _MASK_CHUNK):
                chunk = frames[start : start + _MASK_CHUNK]
                logits = np.stack([track.output(f).low_res for f in chunk])  # type: ignore[union-attr]
                mask[chunk] |= resize_bilinear(logits, (tracker.height, tracker.width)) > 0
        if self.keep_largest_component and mask.any():
            mask = largest_component(mask)
        self._mask_cache[obj.obj_id] = mask
        return mask.copy()

    def object_score(self, obj_id: int, frame: int) -> float:
        """The object's presence logit on ``frame`` in its stored passes (-1024 where it has no output there)."""
        obj = self._get(obj_id)
        for side, track in obj.passes.items():
            out = track.output(frame) if _on_side(frame, obj.key_frame, side) else None
            if out is not None:
                return out.object_score
        return -1024.0

    def prompts(self) -> dict[int, list[ObjectPrompt]]:
        """Every prompt given, per object, in order (the journal)."""
        return {obj_id: list(obj.journal) for obj_id, obj in self._objects.items()}

    def reset(self, obj_ids: Sequence[int] | None = None) -> None:
        """Forget some objects (prompts, state and masks), or all of them."""
        if obj_ids is None:
            self._objects.clear()
            self._mask_cache.clear()
            return
        unknown = [o for o in obj_ids if o not in self._objects]
        if unknown:
            raise NotFound(
                f"unknown object ids {unknown}: known object ids are {self.object_ids or 'none'}",
                reason="OBJECT_NOT_FOUND",
                field="object_ids",
            )
        for obj_id in obj_ids:
            del self._objects[obj_id]
            self._mask_cache.pop(obj_id, None)

    def snapshot(self) -> AnnotationSnapshot:
        """The annotation as it is now (prompts, pending corrections, pass states), for ``restore``."""
        return AnnotationSnapshot(
            {
                i: _Annotated(o.obj_id, list(o.key), dict(o.passes), list(o.pending), list(o.journal))
                for i, o in self._objects.items()
            },
            dict(self._mask_cache),
        )

    def restore(self, snapshot: AnnotationSnapshot) -> None:
        """Put back what a ``snapshot`` took: a change that failed after the engine ran leaves no trace."""
        self._objects = {
            i: _Annotated(o.obj_id, list(o.key), dict(o.passes), list(o.pending), list(o.journal))
            for i, o in snapshot.objects.items()
        }
        self._mask_cache = dict(snapshot.mask_cache)

    @property
    def state_bytes(self) -> int:
        """Bytes held for the objects' tracker states (outputs and memories), not counting the tracker's cache."""
        return sum(t.nbytes for obj in self._objects.values() for t in obj.passes.values())

    def _get(self, obj_id: int) -> _Annotated:
        obj = self._objects.get(obj_id)
        if obj is None:
            raise NotFound(
                f"unknown object id {obj_id}: known object ids are {self.object_ids or 'none'}",
                reason="OBJECT_NOT_FOUND",
                field="object_id",
            )
        return obj


def _count(groups: dict[int, list[_Annotated]], retracks: dict[int, list[_Retrack]], first: int, last: int) -> int:
    """How many (pass, result) pairs a plan's run yields."""
    # The backward pass's key slice is not yielded again: it is the forward pass's (one decode of one prompt).
    full = sum((last - key + 1) + (key - first) for key in groups)
    return full + sum(step.length for steps in retracks.values() for step in steps)


def _is_clicks(prompt: ObjectPrompt) -> bool:
    return prompt.points is not None and prompt.box is None and prompt.mask is None


def _apply_given(tracker: Tracker, given: _Given) -> FrameResult:
    prompt = given.prompt
    if given.keep_previous_points:
        return tracker.add_prompt(
            prompt.obj_id, prompt.frame, points=prompt.points, labels=prompt.labels, clear_old=False
        )
    return apply_prompt(tracker, prompt)


def _side(frame: int, key: int) -> Direction:
    return Direction.FORWARD if frame > key else Direction.BACKWARD


def _on_side(frame: int, key: int, side: Direction) -> bool:
    return frame >= key if side is Direction.FORWARD else frame <= key


def _copy_track(track: ObjectTrack) -> ObjectTrack:
    """A copy the tracker may change without touching ``track`` (outputs are shared: the tracker only replaces them)."""
    return track.copy()
