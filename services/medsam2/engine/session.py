"""One study's interactive session: the interface the service drives, for volumes and videos alike.

A session answers the same calls whatever it propagates with: ``add_prompt``, ``plan``, ``propagate``, ``reset``,
``masks`` and ``describe``. A volume follows MedSAM2's 3D protocol (``protocols.VolumeAnnotation``) until its first
in-state propagation hands its prompts to the tracker; a video is in-state from the start. Which of the two a
session is, and what each keeps per object, stays in here: the service translates messages to these calls.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from medsam2.engine.backend import StageBackend
from medsam2.engine.postprocessing import PostProcessingOptions
from medsam2.engine.postprocessing import resolve as resolve_postprocessing
from medsam2.engine.protocols import ObjectPrompt, VolumeAnnotation, apply_prompt
from medsam2.engine.tracker import Direction, FrameResult, Tracker, TrackerOptions
from medsam2.errors import InvalidInput, PreconditionFailed

__all__ = [
    "NO_SCORE",
    "Description",
    "Direction",
    "FrameResult",
    "ObjectPrompt",
    "Plan",
    "PostProcessingOptions",
    "Session",
    "StageBackend",
    "TrackerOptions",
    "changed_slices",
    "open_session",
    "session_postprocessing",
]

NO_SCORE = -1024.0
"""The presence logit reported for an object with no output on a slice."""


@dataclass(frozen=True, slots=True)
class Description:
    """What a session is: its study's shape (slices, rows, columns) and its objects."""

    shape: tuple[int, int, int]
    object_ids: list[int]


@dataclass(frozen=True, slots=True)
class Plan:
    """One propagation, planned once: the run ``propagate`` yields and how many (pass, result) pairs it has."""

    three_d: bool
    """MedSAM2's 3D protocol (its masks, post-processed, replace the streamed ones at the end) or in-state."""
    total: int
    final: bool
    """Whether every streamed mask is final: only the 3D protocol's largest-component step changes one later."""
    stream: Iterator[tuple[str, FrameResult]] = field(repr=False, compare=False)
    """The run the plan counts: ``Session.propagate`` yields it (once)."""


class Session:
    """A study's prompts, tracks and masks behind one interface (see the module docstring)."""

    def __init__(self, tracker: Tracker, annotation: VolumeAnnotation | None) -> None:
        self.tracker = tracker
        self.annotation = annotation
        """The 3D protocol's state; None once the session propagates in-state (always, for a video)."""

    # -- what the session is ------------------------------------------------------------
    def describe(self) -> Description:
        """The study's shape and the session's objects (sorted)."""
        tracker = self.tracker
        return Description((tracker.num_frames, tracker.height, tracker.width), self.object_ids())

    def object_ids(self) -> list[int]:
        """The objects that have prompts, sorted."""
        if self.annotation is not None:
            return sorted(self.annotation.object_ids)
        return sorted(self.tracker.objects)

    @property
    def frames(self) -> np.ndarray:
        """The study's slices as the model sees them."""
        return self.tracker.frames

    @property
    def height(self) -> int:
        return self.tracker.height

    @property
    def width(self) -> int:
        return self.tracker.width

    # -- prompts --------------------------------------------------------------------------
    def add_prompt(self, prompt: ObjectPrompt, *, keep_previous_points: bool, correction: bool) -> FrameResult:
        """Apply one prompt; returns the prompted slice's result."""
        if self.annotation is not None:
            return self.annotation.add_prompt(prompt, keep_previous_points=keep_previous_points, correction=correction)
        tracker = self.tracker
        if prompt.points is not None and prompt.box is None and keep_previous_points:
            return tracker.add_prompt(
                prompt.obj_id, prompt.frame, points=prompt.points, labels=prompt.labels, clear_old=False
            )
        return apply_prompt(tracker, prompt)

    def reset(self, obj_ids: Sequence[int] | None = None) -> None:
        """Forget the given objects (prompts and tracks), or every object."""
        if self.annotation is not None:
            self.annotation.reset(obj_ids)
        elif obj_ids is None:
            self.tracker.reset()
        else:
            for obj_id in obj_ids:
                if obj_id in self.tracker.objects:
                    self.tracker.reset(obj_id)

    # -- propagation ----------------------------------------------------------------------
    def plan(
        self,
        *,
        three_d: bool,
        first: int | None,
        last: int | None,
        direction: Direction,
        start: int | None,
    ) -> Plan:
        """Check and plan one propagation over slices ``first..last`` (None: the study's ends).

        ``three_d``: MedSAM2's 3D protocol (volumes only); otherwise in-state from ``start`` (None: the first
        prompted slice) in ``direction``. A volume's first in-state plan hands its prompts to the tracker, and the
        session stays in-state from then on.
        """
        slice_range = check_slice_range(first, last, self.tracker.num_frames)
        if three_d:
            annotation = self.annotation
            if annotation is None:
                raise InvalidInput(
                    "the MedSAM2 3D protocol is for volumes, and this session propagates in-state "
                    "(it is a video, or its first propagation was IN_STATE)"
                )
            total, stream = annotation.plan(slice_range)  # NO_PROMPTS without objects
            return Plan(three_d=True, total=total, final=not annotation.keep_largest_component, stream=stream)
        if self.annotation is not None:
            self._switch_to_in_state()
        return self._plan_in_state(slice_range, direction, start)

    def _switch_to_in_state(self) -> None:
        annotation = self.annotation
        assert annotation is not None
        propagated = [o for o in annotation.object_ids if annotation.is_propagated(o)]
        if propagated:
            raise InvalidInput(
                f"objects {propagated} were propagated with the MedSAM2 3D protocol: keep using it "
                "(corrections re-track from their slice), or reset them before propagating in-state"
            )
        for prompts in annotation.prompts().values():
            for prompt in prompts:
                apply_prompt(self.tracker, prompt)
        self.annotation = None

    def _plan_in_state(self, slice_range: tuple[int, int] | None, direction: Direction, start: int | None) -> Plan:
        tracker = self.tracker
        if not tracker.objects:
            raise PreconditionFailed(
                "no prompts yet: add a box, points or a mask before propagating", reason="NO_PROMPTS"
            )
        origin = (
            start if start is not None else min(t for o in tracker.objects.values() for t in (*o.cond, *o.pending_cond))
        )
        passes = (Direction.FORWARD, Direction.BACKWARD) if direction is Direction.BOTH else (direction,)
        first, last = slice_range if slice_range is not None else (0, tracker.num_frames - 1)
        if not first <= origin <= last:
            raise InvalidInput(f"start slice {origin} is outside the slice range {first},{last}")
        total = 0
        for chosen in passes:
            total += (origin - first + 1 if origin > 0 else 0) if chosen is Direction.BACKWARD else (last - origin + 1)
        stream = self._run_in_state(passes, origin, first, last)
        return Plan(three_d=False, total=total, final=True, stream=stream)

    def propagate(self, plan: Plan) -> Iterator[tuple[str, FrameResult]]:
        """Run a plan: (pass name, result) per slice."""
        return plan.stream

    def _run_in_state(
        self, passes: tuple[Direction, ...], origin: int, first: int, last: int
    ) -> Iterator[tuple[str, FrameResult]]:
        for chosen in passes:
            limit = (origin - first) if chosen is Direction.BACKWARD else (last - origin)
            for result in self.tracker.propagate(chosen, start=origin, limit=max(limit, 0)):
                yield chosen.value, result

    # -- results --------------------------------------------------------------------------
    def masks(self) -> dict[int, np.ndarray]:
        """The 3D protocol's masks per object (passes merged, corrections applied, post-processed); in-state
        sessions keep none beside what they streamed, so none."""
        return self.annotation.masks() if self.annotation is not None else {}

    def result_masks(self, result: FrameResult) -> np.ndarray:
        """A result's masks at the slice's size."""
        return result.masks(self.tracker.height, self.tracker.width)

    def scores(self, result: FrameResult) -> list[float]:
        """Each object's presence logit in a frame result (from the tracker when the result carries none)."""
        if result.object_scores:
            return list(result.object_scores)
        tracker = self.tracker
        scores = []
        for obj_id in result.obj_ids:
            out = tracker.objects[obj_id].output(result.frame) if obj_id in tracker.objects else None
            scores.append(out.object_score if out is not None else NO_SCORE)
        return scores

    def score(self, obj_id: int, frame: int) -> float:
        """An object's stored presence logit on ``frame`` (NO_SCORE where it has no output there)."""
        if self.annotation is not None:
            if obj_id in self.annotation.object_ids:
                return self.annotation.object_score(obj_id, frame)
            return NO_SCORE
        track = self.tracker.objects.get(obj_id)
        out = track.output(frame) if track is not None else None
        return out.object_score if out is not None else NO_SCORE


def check_slice_range(first: int | None, last: int | None, num_frames: int) -> tuple[int, int] | None:
    """The slice range ``first..last`` (None: the study's ends), checked against the study; None when both are."""
    if first is None and last is None:
        return None
    first = 0 if first is None else first
    last = num_frames - 1 if last is None else last
    if last >= num_frames or first > last:
        raise InvalidInput(
            f"slice range {first},{last} does not fit the study's {num_frames} slices (0..{num_frames - 1})"
        )
    return first, last


def changed_slices(before: dict[int, np.ndarray], after: dict[int, np.ndarray]) -> dict[int, dict[int, np.ndarray]]:
    """Per slice, the objects whose mask in ``after`` differs from ``before`` (absent there: non-empty slices)."""
    changed: dict[int, dict[int, np.ndarray]] = {}
    for obj_id, mask in after.items():
        old = before.get(obj_id)
        frames = range(mask.shape[0]) if old is None else np.flatnonzero((old != mask).any(axis=(1, 2)))
        for frame in frames:
            if old is not None or mask[frame].any():
                changed.setdefault(int(frame), {})[obj_id] = mask[frame]
    return changed


def session_postprocessing(requested: dict, *, video: bool, fill_hole_area: int) -> PostProcessingOptions:
    """MedSAM2's defaults for the study's kind under ``requested``; a volume's hole filling defaults to
    ``fill_hole_area``."""
    if not video:
        requested = {"fill_hole_area": fill_hole_area} | requested
    options = resolve_postprocessing("video" if video else "volume", requested)
    if video and options.largest_component:
        raise InvalidInput(
            "postprocessing.largest_component applies to volumes (MedSAM2's 3D protocol), not to videos",
            field="header.postprocessing.largest_component",
        )
    return options


def open_session(
    backend: StageBackend,
    frames: np.ndarray,
    options: TrackerOptions,
    postprocessing: PostProcessingOptions,
    *,
    video: bool,
) -> Session:
    """A new session on ``frames``: the 3D protocol for a volume, in-state for a video."""
    options = replace(
        options,
        fill_hole_area=postprocessing.fill_hole_area,
        non_overlapping_objects=postprocessing.non_overlapping_objects,
        binarize_memory=postprocessing.binarize_memory,
    )
    tracker = Tracker(backend, frames, options)
    annotation = None if video else VolumeAnnotation(tracker, keep_largest_component=postprocessing.largest_component)
    return Session(tracker, annotation)
