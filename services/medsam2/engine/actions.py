"""Actions files: a JSON list of annotation steps, parsed into typed steps and run on a ``VolumeAnnotation``.

The schema (every key checked; unknown ops and unknown keys are errors naming the step)::

    [{"op": "box", "object": 1, "slice": 30, "box": [x0, y0, x1, y1]},
     {"op": "propagate"},
     {"op": "click", "object": 1, "slice": 33, "point": [x, y], "positive": false},
     {"op": "mask", "object": 1, "slice": 30, "path": "mask.png"},
     {"op": "propagate", "range": [first, last]}]

A prompt step may also describe its object (what its SEG segment and SR group
say), as ``AddPrompt.object_info`` does; a later description of the same object
overrides the fields it gives::

    {"op": "box", "object": 1, "slice": 30, "box": [...], "label": "liver lesion",
     "colour": [255, 0, 0],
     "category": {"value": "49755003", "scheme": "SCT", "meaning": "Morphologically Altered Structure"},
     "type": {"value": "4147007", "scheme": "SCT", "meaning": "Mass"}}

Coordinates are pixels of the original slice (x = column, y = row), as for
``--box``; slices count from 0 along the study.  Clicks on one slice accumulate
(sam2's ``clear_old_points=False``); a box or a mask replaces what its slice had.
What a prompt means (key prompt, correction, restart) is ``VolumeAnnotation``'s
rule.  Steps are numbered from 0 as in the JSON list (``actions[3]``).

This module does no file I/O: ``medsam2.io.actions_file`` reads the JSON and the
mask images; ``run_actions`` takes the masks already loaded.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath

import numpy as np

from medsam2.engine.prompts import Box, check_mask, to_model_points
from medsam2.engine.protocols import ObjectPrompt, VolumeAnnotation
from medsam2.engine.tracker import FrameResult
from medsam2.errors import InvalidInput, InvalidPrompt

OPS = ("box", "click", "mask", "propagate")
_OBJECT_KEYS = frozenset({"label", "colour", "category", "type"})
"""Keys any prompt step may carry to describe its object."""
MAX_LABEL_CHARS = 64
"""A DICOM segment label (LO) holds at most 64 characters."""


@dataclass(frozen=True, slots=True)
class CodedConcept:
    """A coded concept (value, coding scheme, meaning), e.g. ("4147007", "SCT", "Mass")."""

    value: str
    scheme: str
    meaning: str


@dataclass(frozen=True, slots=True)
class ObjectDescription:
    """What a prompt step says about its object; ``None`` fields leave the object's current value."""

    label: str | None = None
    colour: tuple[int, int, int] | None = None
    category: CodedConcept | None = None
    property_type: CodedConcept | None = None


@dataclass(frozen=True, slots=True)
class BoxStep:
    """A box on one slice of one object."""

    index: int
    obj_id: int
    slice: int
    box: Box
    describes: ObjectDescription | None = None


@dataclass(frozen=True, slots=True)
class ClickStep:
    """One click on one slice of one object; ``positive`` False marks background."""

    index: int
    obj_id: int
    slice: int
    point: tuple[float, float]
    positive: bool = True
    describes: ObjectDescription | None = None


@dataclass(frozen=True, slots=True)
class MaskStep:
    """A mask image (non-zero = object) for one slice of one object; ``path`` is resolved against the file's folder."""

    index: int
    obj_id: int
    slice: int
    path: Path
    describes: ObjectDescription | None = None


@dataclass(frozen=True, slots=True)
class PropagateStep:
    """Propagate what is due (``VolumeAnnotation.propagate``), optionally within a slice range."""

    index: int
    slice_range: tuple[int, int] | None = None


Step = BoxStep | ClickStep | MaskStep | PropagateStep
PromptStep = BoxStep | ClickStep | MaskStep

_KEYS: dict[str, tuple[frozenset[str], frozenset[str]]] = {  # op -> (required, optional)
    "box": (frozenset({"op", "object", "slice", "box"}), _OBJECT_KEYS),
    "click": (frozenset({"op", "object", "slice", "point"}), frozenset({"positive"}) | _OBJECT_KEYS),
    "mask": (frozenset({"op", "object", "slice", "path"}), _OBJECT_KEYS),
    "propagate": (frozenset({"op"}), frozenset({"range"})),
}


def parse_actions(data: object, *, base_dir: Path) -> list[Step]:
    """Decoded JSON -> typed steps; ``InvalidInput`` naming the step (``actions[i]``) and the problem."""
    if not isinstance(data, list):
        raise InvalidInput(f"an actions file must hold a JSON list of steps, got a {_json_type(data)}")
    if not data:
        raise InvalidInput("the actions file has no steps")
    return [_parse_step(i, raw, base_dir) for i, raw in enumerate(data)]


def _parse_step(index: int, raw: object, base_dir: Path) -> Step:
    where = f"actions[{index}]"
    if not isinstance(raw, dict):
        raise InvalidInput(f'{where}: each step must be a JSON object with an "op", got a {_json_type(raw)}')
    op = raw.get("op")
    if op not in _KEYS:
        shown = repr(op) if op is not None else "none"
        raise InvalidInput(f"{where}: unknown op {shown}: choose one of {', '.join(OPS)}")
    required, optional = _KEYS[op]
    where = f"actions[{index}] ({op})"
    unknown = sorted(set(raw) - required - optional)
    if unknown:
        allowed = ", ".join(sorted(required | optional))
        raise InvalidInput(
            f"{where}: unknown key{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(map(repr, unknown))}: allowed keys are {allowed}"
        )
    missing = sorted(required - set(raw))
    if missing:
        raise InvalidInput(f"{where}: missing {', '.join(map(repr, missing))}")
    if op == "propagate":
        slice_range = None
        if "range" in raw:
            first, last = (
                _integer(v, f'{where}: "range"') for v in _numbers(raw["range"], 2, where, "range", "[first, last]")
            )
            if first > last:
                raise InvalidInput(f'{where}: "range" [{first}, {last}] is reversed: first must be <= last')
            slice_range = (first, last)
        return PropagateStep(index, slice_range)
    obj_id = _integer(raw["object"], f'{where}: "object"')
    if obj_id < 1:
        raise InvalidInput(f'{where}: "object" must be a positive integer, got {obj_id}')
    frame = _integer(raw["slice"], f'{where}: "slice"')
    describes = _description(raw, where)
    if op == "box":
        box = Box(*_numbers(raw["box"], 4, where, "box", "[x0, y0, x1, y1]"))
        return BoxStep(index, obj_id, frame, box, describes)
    if op == "click":
        positive = raw.get("positive", True)
        if not isinstance(positive, bool):
            raise InvalidInput(f'{where}: "positive" must be true or false, got {positive!r}')
        x, y = _numbers(raw["point"], 2, where, "point", "[x, y]")
        return ClickStep(index, obj_id, frame, (x, y), positive, describes)
    path = raw["path"]
    if not isinstance(path, str) or not path:
        raise InvalidInput(f'{where}: "path" must be a file name relative to the actions file, got {path!r}')
    return MaskStep(index, obj_id, frame, Path(base_dir) / PurePath(path), describes)


def _description(raw: dict, where: str) -> ObjectDescription | None:
    """The step's "label", "colour", "category" and "type", checked; None when it gives none."""
    if not _OBJECT_KEYS & set(raw):
        return None
    label = raw.get("label")
    if label is not None:
        label = parse_label(label, f'{where}: "label"')
    colour = raw.get("colour")
    if colour is not None:
        colour = parse_colour(colour, f'{where}: "colour"')
    category, property_type = (
        None if raw.get(key) is None else parse_concept(raw[key], f'{where}: "{key}"') for key in ("category", "type")
    )
    return ObjectDescription(label, colour, category, property_type)


def parse_label(value: object, what: str) -> str:
    """A segment label: 1 to 64 printable characters, no backslash (DICOM LO)."""
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_LABEL_CHARS:
        raise InvalidInput(f"{what} must be a name of 1 to {MAX_LABEL_CHARS} characters, got {value!r}")
    if "\\" in value or not value.isprintable():
        raise InvalidInput(f"{what} must be printable text without backslashes, got {value!r}")
    return value.strip()


def parse_colour(value: object, what: str) -> tuple[int, int, int]:
    """An sRGB colour [r, g, b], each a whole number 0..255."""
    if (
        not isinstance(value, list)
        or len(value) != 3
        or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in value)
    ):
        raise InvalidInput(f"{what} must be [r, g, b] with each a whole number 0..255, got {value!r}")
    return (value[0], value[1], value[2])


def parse_concept(value: object, what: str) -> CodedConcept:
    """A coded concept {"value", "scheme", "meaning"}: value and meaning 1..64 characters, scheme 1..16."""
    keys = {"value", "scheme", "meaning"}
    if not isinstance(value, dict) or set(value) != keys or not all(isinstance(value[k], str) for k in keys):
        raise InvalidInput(f'{what} must be {{"value": ..., "scheme": ..., "meaning": ...}} (strings), got {value!r}')
    code, scheme, meaning = (value[k].strip() for k in ("value", "scheme", "meaning"))
    if not (0 < len(code) <= 64 and 0 < len(scheme) <= 16 and 0 < len(meaning) <= 64):
        raise InvalidInput(f"{what}: value and meaning need 1 to 64 characters, scheme 1 to 16, got {value!r}")
    return CodedConcept(code, scheme, meaning)


def _integer(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise InvalidInput(f"{what} must be a whole number, got {value!r}")
    return int(value)


def _numbers(value: object, count: int, where: str, key: str, form: str) -> list[float]:
    if (
        not isinstance(value, list)
        or len(value) != count
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        raise InvalidInput(f'{where}: "{key}" must be {form} ({count} numbers), got {value!r}')
    if not all(math.isfinite(v) for v in value):
        raise InvalidInput(f'{where}: "{key}" has a non-finite number: {value!r}')
    return [float(v) for v in value]


def _json_type(value: object) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def to_prompt(step: PromptStep, mask: np.ndarray | None = None) -> tuple[ObjectPrompt, bool]:
    """A prompt step -> (the prompt, keep_previous_points) as ``VolumeAnnotation.add_prompt`` takes them."""
    if isinstance(step, BoxStep):
        return ObjectPrompt(step.obj_id, step.slice, box=step.box), False
    if isinstance(step, ClickStep):
        points = np.array([step.point], np.float64)
        return ObjectPrompt(step.obj_id, step.slice, points=points, labels=np.array([int(step.positive)])), True
    if mask is None:
        raise InvalidInput(f"actions[{step.index}] (mask): the mask {step.path.name} was not loaded")
    return ObjectPrompt(step.obj_id, step.slice, mask=mask), False


def check_actions(steps: Sequence[Step], shape: tuple[int, int, int], masks: Mapping[int, np.ndarray]) -> None:
    """Check every step against a study of ``shape`` (slices, rows, columns) before anything runs.

    Slices, boxes, clicks and masks must fit the study; a propagate needs a prompt
    before it, and its range must hold the key slice of every object it starts and
    every correction it re-tracks (``VolumeAnnotation``'s rules, followed step by step).
    """
    num_frames, height, width = shape
    keys: dict[int, int] = {}  # object -> key slice
    propagated: set[int] = set()
    pending: dict[int, list[int]] = {}
    new: set[int] = set()
    for step in steps:
        where = f"actions[{step.index}] ({_op(step)})"
        if isinstance(step, PropagateStep):
            _check_propagate(step, where, num_frames, keys, propagated, pending, new)
            continue
        if not 0 <= step.slice < num_frames:
            raise InvalidInput(
                f"{where}: slice {step.slice} is out of range: the study has {num_frames} slices (0..{num_frames - 1})"
            )
        try:
            if isinstance(step, MaskStep):
                if step.index not in masks:
                    raise InvalidInput(f"the mask {step.path.name} was not loaded")
                check_mask(masks[step.index], height, width)
            else:
                prompt, _ = to_prompt(step)
                to_model_points(height, width, prompt.box, prompt.points, prompt.labels)
        except InvalidInput as exc:
            raise type(exc)(f"{where}: {exc}") from None
        obj = step.obj_id
        if obj in propagated and step.slice != keys[obj]:
            pending.setdefault(obj, []).append(step.slice)
        else:  # a key prompt, or a restart on the key slice
            if obj not in keys or obj not in propagated:
                keys[obj] = step.slice
            propagated.discard(obj)
            pending.pop(obj, None)
            new.add(obj)


def _check_propagate(
    step: PropagateStep,
    where: str,
    num_frames: int,
    keys: dict[int, int],
    propagated: set[int],
    pending: dict[int, list[int]],
    new: set[int],
) -> None:
    if not keys:
        raise InvalidInput(f"{where}: nothing to propagate: give a box, click or mask before it")
    first, last = step.slice_range if step.slice_range is not None else (0, num_frames - 1)
    if step.slice_range is not None and not (0 <= first and last < num_frames):
        raise InvalidInput(f"{where}: range [{first}, {last}] is outside the study's slices 0..{num_frames - 1}")
    for obj in sorted(new):
        if not first <= keys[obj] <= last:
            raise InvalidInput(f"{where}: key slice {keys[obj]} of object {obj} is outside the range [{first}, {last}]")
    for obj, slices in sorted(pending.items()):
        for frame in slices:
            if not first <= frame <= last:
                raise InvalidInput(
                    f"{where}: the correction on slice {frame} of object {obj} is outside the range [{first}, {last}]"
                )
    propagated.update(new)
    new.clear()
    pending.clear()


def _op(step: Step) -> str:
    return {BoxStep: "box", ClickStep: "click", MaskStep: "mask", PropagateStep: "propagate"}[type(step)]


PassCallback = Callable[[str, FrameResult], None]


def run_actions(
    annotation: VolumeAnnotation,
    steps: Sequence[Step],
    masks: Mapping[int, np.ndarray] | None = None,
    *,
    default_range: tuple[int, int] | None = None,
    on_frame: PassCallback | None = None,
    on_plan: Callable[[int], None] | None = None,
) -> None:
    """Run the steps in order on ``annotation``, after checking all of them against its study.

    ``masks`` maps a mask step's index to its loaded image; ``default_range`` is the range of
    propagate steps that give none; ``on_plan`` gets each propagation's planned slice count
    before it starts and ``on_frame`` each (pass name, result) it yields.
    """
    masks = masks or {}
    tracker = annotation.tracker
    resolved = [
        PropagateStep(s.index, default_range)
        if isinstance(s, PropagateStep) and s.slice_range is None and default_range is not None
        else s
        for s in steps
    ]
    check_actions(resolved, (tracker.num_frames, tracker.height, tracker.width), masks)
    for step in resolved:
        if isinstance(step, PropagateStep):
            if on_plan is not None:
                on_plan(annotation.planned_slices(step.slice_range))
            for pass_name, result in annotation.propagate(step.slice_range):
                if on_frame is not None:
                    on_frame(pass_name, result)
            continue
        prompt, keep = to_prompt(step, masks.get(step.index))
        try:
            annotation.add_prompt(prompt, keep_previous_points=keep)
        except InvalidPrompt as exc:
            raise InvalidPrompt(f"actions[{step.index}] ({_op(step)}): {exc}") from None


def shorthand_steps(
    obj_id: int,
    frame: int,
    *,
    box: Box | None = None,
    mask_path: Path | None = None,
    slice_range: tuple[int, int] | None = None,
    describes: ObjectDescription | None = None,
) -> list[Step]:
    """``--box``/``--mask`` with ``--slice``: a box (or mask, index 0) step followed by a propagate step."""
    if (box is None) == (mask_path is None):
        raise InvalidInput("give either a box or a mask")
    if box is not None:
        return [BoxStep(0, obj_id, frame, box, describes), PropagateStep(1, slice_range)]
    assert mask_path is not None
    return [MaskStep(0, obj_id, frame, Path(mask_path), describes), PropagateStep(1, slice_range)]


def object_descriptions(steps: Sequence[Step]) -> dict[int, ObjectDescription]:
    """Each described object's description after all steps: a later step's fields override earlier ones."""
    merged: dict[int, ObjectDescription] = {}
    for step in steps:
        if isinstance(step, PropagateStep) or step.describes is None:
            continue
        old, new = merged.get(step.obj_id, ObjectDescription()), step.describes
        merged[step.obj_id] = ObjectDescription(
            new.label if new.label is not None else old.label,
            new.colour if new.colour is not None else old.colour,
            new.category if new.category is not None else old.category,
            new.property_type if new.property_type is not None else old.property_type,
        )
    return merged
