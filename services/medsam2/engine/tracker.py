"""Promptable tracking through a volume or video: sam2 1.1.0's video-predictor semantics in numpy.

One ``Tracker`` holds one study: its frames (already windowed to uint8), the
prompts and per-frame outputs of each object, and a feature cache.  It calls a
``StageBackend`` with named tensors and knows nothing of files or RPC.

Semantics follow ``SAM2VideoPredictor`` (sam2 1.1.0) with MedSAM2's config:
- prompts on a frame not yet tracked make it a conditioning frame; prompts on a
  tracked frame are corrections decoded with memory and the frame's previous
  logits as a mask prompt, and replace its tracked output;
- memories are stored in bfloat16, as sam2 stores them;
- objects are tracked independently; objects on the same frame are batched,
  which changes no number because each batch row sees only its own memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum

import numpy as np
from PIL import Image

from medsam2.engine.backend import StageBackend
from medsam2.engine.feature_cache import FeatureCache, FrameFeatures
from medsam2.engine.holes import fill_holes
from medsam2.engine.mask_choice import NO_OBJECT_SCORE, choose_mask, use_multimask
from medsam2.engine.memory_bank import FrameMemory, batch_memory, empty_memory, gather_memory
from medsam2.engine.overlap import apply_non_overlapping
from medsam2.engine.prompts import Box, ModelPoints, check_frame, check_mask, prompt_inputs, to_model_points
from medsam2.engine.resize import resize_antialiased, resize_bilinear, to_bfloat16_bits
from medsam2.errors import InvalidInput, NotFound, PreconditionFailed
from medsam2.graphs import IMAGE_SIZE, LOW_RES, MAX_MEMORY_SLOTS, MAX_POINTS, Stage

MASK_PROMPT_SCALE, MASK_PROMPT_BIAS = 20.0, -10.0  # sam2 turns a binary mask into +-10 logits
PREV_LOGITS_CLAMP = 32.0


class Direction(str, Enum):
    """Which way propagation runs from its start frame."""

    FORWARD = "forward"
    BACKWARD = "backward"
    BOTH = "both"


@dataclass(slots=True)
class FrameOutput:
    """One object's stored result on one frame."""

    low_res: np.ndarray  # [128, 128] float32 logits, -1024 where absent
    obj_ptr: np.ndarray  # [256] float32
    object_score: float
    maskmem_bf16: np.ndarray | None = None  # [64, 32, 32] uint16 (bfloat16 bits)

    def memory(self) -> FrameMemory:
        """This output as a memory-bank entry (still in bfloat16 until attended)."""
        assert self.maskmem_bf16 is not None
        return FrameMemory(self.maskmem_bf16, self.obj_ptr)

    @property
    def nbytes(self) -> int:
        """Bytes held by this output."""
        mem = 0 if self.maskmem_bf16 is None else self.maskmem_bf16.nbytes
        return self.low_res.nbytes + self.obj_ptr.nbytes + mem


@dataclass(slots=True)
class ObjectTrack:
    """Everything the tracker keeps for one object."""

    obj_id: int
    points: dict[int, ModelPoints] = field(default_factory=dict)
    masks: dict[int, np.ndarray] = field(default_factory=dict)  # frame -> [512, 512] float32 0/1
    cond: dict[int, FrameOutput] = field(default_factory=dict)
    non_cond: dict[int, FrameOutput] = field(default_factory=dict)
    pending_cond: dict[int, FrameOutput] = field(default_factory=dict)  # prompted, memory not encoded yet
    pending_non_cond: dict[int, FrameOutput] = field(default_factory=dict)  # corrections, idem
    tracked: dict[int, bool] = field(default_factory=dict)  # frame -> tracked in reverse

    def output(self, frame: int) -> FrameOutput | None:
        """The newest output of this object on ``frame``, if any."""
        for store in (self.pending_cond, self.pending_non_cond, self.cond, self.non_cond):
            if frame in store:
                return store[frame]
        return None

    def copy(self) -> ObjectTrack:
        """A copy the tracker may change without touching this one (outputs are shared: they are only replaced)."""
        return ObjectTrack(
            self.obj_id,
            dict(self.points),
            dict(self.masks),
            dict(self.cond),
            dict(self.non_cond),
            dict(self.pending_cond),
            dict(self.pending_non_cond),
            dict(self.tracked),
        )

    @property
    def nbytes(self) -> int:
        """Bytes of stored outputs."""
        stores = (self.cond, self.non_cond, self.pending_cond, self.pending_non_cond)
        return sum(out.nbytes for store in stores for out in store.values())


@dataclass(frozen=True, slots=True)
class FrameResult:
    """Low-resolution logits of every object on one frame."""

    frame: int
    obj_ids: tuple[int, ...]
    low_res: np.ndarray  # [K, 128, 128] float32
    object_scores: tuple[float, ...] = ()
    """Each object's object-score logit on this frame (> 0: present; -1024 where it has no output)."""
    non_overlapping: bool = False
    """Give each pixel of ``masks`` to the object with the largest logit (sam2's non_overlap_masks)."""

    def masks(self, height: int, width: int) -> np.ndarray:
        """Boolean masks [K, height, width] at the slice's size (bilinear upsampling, then > 0).

        With ``non_overlapping`` the constraint acts on the upsampled logits, where sam2 applies it.
        """
        logits = resize_bilinear(self.low_res, (height, width))
        if self.non_overlapping:
            logits = apply_non_overlapping(logits)
        return logits > 0


@dataclass(frozen=True, slots=True)
class TrackerOptions:
    """Tunables of one tracker."""

    feature_cache_bytes: int = 512 * 2**20
    """Bound of the per-study image-feature LRU (about 4 MiB per slice)."""
    early_stop_absent: int = 0
    """Stop tracking an object after this many consecutive absent slices; 0 disables (the reference never stops)."""
    fill_hole_area: int = 8
    """Fill background islands up to this many low-res pixels (MedSAM2's setting); 0 turns it off, as parity needs."""
    corrections_as_conditioning: bool = False
    """Make a prompt on an already tracked slice a conditioning frame (sam2's add_all_frames_to_correct_as_cond).

    Off by default, as in the reference: a correction replaces the slice's tracked output instead."""
    non_overlapping_objects: bool = False
    """Give each pixel of a frame's masks to the object with the largest logit (sam2's non_overlap_masks, on in
    MedSAM2's video script); it acts on the returned masks only, never on stored outputs or memories, as in sam2."""
    binarize_memory: bool = True
    """Threshold prompted masks at 0 before the memory encoder instead of the sigmoid (sam2's
    binarize_mask_from_pts_for_mem_enc: on with apply_postprocessing, as MedSAM2's 3D script; off in its video
    script)."""
    memory_slots: int = 0
    """Pad every memory bank to at least this many slots (invalid ones, masked out: no number changes), so that
    Triton's dynamic batcher can merge the requests of sessions whose banks differ in size. 0 pads nothing: on the
    CPU the empty slots only cost attention work (benchmarks/memory_padding.py)."""


def prepare_frames(frames: np.ndarray) -> np.ndarray:
    """uint8 slices [N, H, W] or RGB frames [N, H, W, 3] -> model inputs [N, 1 or 3, 512, 512].

    Resized as sam2's loader does (Pillow bicubic, per channel). Grey stays one channel: the image encoder
    replicates it to RGB, so a grey study costs a third of the bytes on the wire and in memory.
    """
    channels = 3 if frames.ndim == 4 else 1
    out = np.empty((frames.shape[0], channels, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    for i, frame in enumerate(frames):
        image = Image.fromarray(np.ascontiguousarray(frame))
        resized = np.asarray(image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC))
        out[i] = resized.transpose(2, 0, 1) if channels == 3 else resized[None]
    return out


def check_frames(frames: np.ndarray) -> None:
    """Raise ``InvalidInput`` unless ``frames`` is a non-empty uint8 stack [N, H, W] (grey) or [N, H, W, 3] (RGB)."""
    if frames.ndim == 4 and frames.shape[3] != 3:
        raise InvalidInput(f"colour frames need 3 channels (RGB) on the last axis, got shape {frames.shape}")
    if frames.ndim not in (3, 4):
        raise InvalidInput(
            f"expected slices as [slices, rows, columns] or RGB frames as [frames, rows, columns, 3], "
            f"got shape {frames.shape}"
        )
    if frames.shape[0] == 0:
        raise InvalidInput("the study has zero slices")
    if frames.shape[1] == 0 or frames.shape[2] == 0:
        raise InvalidInput(f"slices have an empty side: shape {frames.shape}")
    if frames.dtype != np.uint8:
        raise InvalidInput(f"slices must be windowed to uint8 before tracking, got {frames.dtype}")


class Tracker:
    """sam2's video predictor over stage graphs, for one study."""

    def __init__(self, backend: StageBackend, frames: np.ndarray, options: TrackerOptions = TrackerOptions()) -> None:
        check_frames(frames)
        if not 0 <= options.memory_slots <= MAX_MEMORY_SLOTS:
            raise InvalidInput(f"memory_slots must be between 0 and {MAX_MEMORY_SLOTS}, got {options.memory_slots}")
        self.backend = backend
        self.options = options
        self.num_frames, self.height, self.width = frames.shape[:3]
        self._inputs = prepare_frames(frames)
        # The slices at their own size, for saving a corrected study as training data. At the model's size they
        # are the inputs themselves (Pillow returns a same-size resize unchanged), so they cost nothing extra.
        same_size = frames.shape[1:] == (IMAGE_SIZE, IMAGE_SIZE)
        self._frames = self._inputs[:, 0] if same_size else np.array(frames, np.uint8, copy=True)
        self.features = FeatureCache(self._encode, options.feature_cache_bytes)
        self.objects: dict[int, ObjectTrack] = {}

    # -- prompts ------------------------------------------------------------------------
    def add_prompt(
        self,
        obj_id: int,
        frame: int,
        box: Box | None = None,
        points: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        *,
        clear_old: bool = True,
    ) -> FrameResult:
        """A box and/or clicks for one object on one frame (sam2's ``add_new_points_or_box``)."""
        check_frame(frame, self.num_frames)
        new = to_model_points(self.height, self.width, box, points, labels)
        track = self.objects.get(obj_id)
        if box is not None and not clear_old:
            raise InvalidInput("a box replaces the slice's earlier prompts: use clear_old=True with a box")
        previous = track.points.get(frame) if (track is not None and not clear_old) else None
        prompt = previous.then(new) if previous is not None else new
        if prompt.count > MAX_POINTS:
            raise InvalidInput(f"too many points on slice {frame}: {prompt.count}, at most {MAX_POINTS}")
        track = self._track(obj_id)
        track.points[frame] = prompt
        track.masks.pop(frame, None)
        return self._decode_prompt(track, frame, prompt=prompt, mask=None)

    def add_mask(self, obj_id: int, frame: int, mask: np.ndarray) -> FrameResult:
        """A mask prompt [H, W] for one object on one frame (sam2's ``add_new_mask``)."""
        check_frame(frame, self.num_frames)
        binary = check_mask(mask, self.height, self.width)
        if binary.shape != (IMAGE_SIZE, IMAGE_SIZE):
            binary = (resize_antialiased(binary, (IMAGE_SIZE, IMAGE_SIZE)) >= 0.5).astype(np.float32)
            if not binary.any():
                raise InvalidInput("mask vanishes when resized to the model input: it is smaller than a model pixel")
        track = self._track(obj_id)
        track.masks[frame] = binary
        track.points.pop(frame, None)
        return self._decode_prompt(track, frame, prompt=None, mask=binary)

    def _track(self, obj_id: int) -> ObjectTrack:
        if obj_id not in self.objects:
            self.objects[obj_id] = ObjectTrack(obj_id)
        return self.objects[obj_id]

    def _decode_prompt(
        self, track: ObjectTrack, frame: int, prompt: ModelPoints | None, mask: np.ndarray | None
    ) -> FrameResult:
        is_init = frame not in track.tracked
        reverse = track.tracked.get(frame, False)
        as_cond = is_init or self.options.corrections_as_conditioning
        pending = track.pending_cond if as_cond else track.pending_non_cond
        prev_logits = None
        if prompt is not None:
            previous = pending.get(frame) or track.cond.get(frame) or track.non_cond.get(frame)
            if previous is not None:
                prev_logits = np.clip(previous.low_res, -PREV_LOGITS_CLAMP, PREV_LOGITS_CLAMP)
        if mask is not None:
            out = self._mask_as_output(frame, mask)
        else:
            out = self._infer(
                frame, [track], [prompt], [prev_logits], is_init=is_init, reverse=reverse, encode_memory=False
            )[0]
        pending[frame] = out
        self.features.pin(frame)
        return self.result(frame)

    # -- propagation --------------------------------------------------------------------
    def propagate(
        self,
        direction: Direction = Direction.FORWARD,
        start: int | None = None,
        limit: int | None = None,
        *,
        reverse_from_zero: bool = False,
    ) -> Iterator[FrameResult]:
        """Track every object frame by frame from ``start``; ``limit`` bounds how many frames past it.

        sam2 skips a backward pass that starts at frame 0; ``reverse_from_zero`` tracks frame 0
        instead (a correction on slice 1 re-tracking slice 0 needs it).
        """
        direction = Direction(direction)
        if start is not None:
            check_frame(start, self.num_frames)
        if limit is not None and limit < 0:
            raise InvalidInput(f"frame limit must be >= 0, got {limit}")
        self._preflight()
        if start is None:
            start = min(t for track in self.objects.values() for t in track.cond)
        passes = [False, True] if direction is Direction.BOTH else [direction is Direction.BACKWARD]
        for reverse in passes:
            yield from self._propagate_pass(start, limit, reverse=reverse, reverse_from_zero=reverse_from_zero)

    def _propagate_pass(
        self, start: int, limit: int | None, *, reverse: bool, reverse_from_zero: bool = False
    ) -> Iterator[FrameResult]:
        self._preflight()
        limit = self.num_frames if limit is None else limit
        if reverse:
            order = range(start, max(start - limit, 0) - 1, -1) if start > 0 or reverse_from_zero else range(0)
        else:
            order = range(start, min(start + limit, self.num_frames - 1) + 1)
        absent_run = {obj_id: 0 for obj_id in self.objects}
        stopped: set[int] = set()
        for frame in order:
            to_track = [t for t in self.objects.values() if frame not in t.cond and t.obj_id not in stopped]
            if to_track:
                outs = self._infer(
                    frame,
                    to_track,
                    [None] * len(to_track),
                    [None] * len(to_track),
                    is_init=False,
                    reverse=reverse,
                    encode_memory=True,
                )
                for track, out in zip(to_track, outs, strict=False):
                    track.non_cond[frame] = out
            for track in self.objects.values():
                if track.obj_id in stopped:
                    continue
                track.tracked[frame] = reverse
                out = track.cond.get(frame) or track.non_cond[frame]
                absent_run[track.obj_id] = absent_run[track.obj_id] + 1 if out.object_score <= 0 else 0
            yield self.result(frame, skip=stopped)
            if self.options.early_stop_absent > 0:
                stopped |= {o for o, run in absent_run.items() if run >= self.options.early_stop_absent}
                if len(stopped) == len(self.objects):
                    return

    def _preflight(self) -> None:
        """Encode the memories of prompted and corrected frames (sam2's ``propagate_in_video_preflight``)."""
        if not self.objects:
            raise PreconditionFailed(
                "no prompts yet: add a box, points or a mask before propagating", reason="NO_PROMPTS"
            )
        for track in self.objects.values():
            if not track.cond and not track.pending_cond:
                raise PreconditionFailed(f"object {track.obj_id} has no prompt on an untracked slice")
        for track in self.objects.values():
            for pending, store in ((track.pending_non_cond, track.non_cond), (track.pending_cond, track.cond)):
                for frame, out in pending.items():
                    if out.maskmem_bf16 is None:
                        high_res = resize_bilinear(out.low_res[None, None], (IMAGE_SIZE, IMAGE_SIZE))
                        # sam2's preflight encodes every prompted frame with is_mask_from_pts=True, so the
                        # model flag alone decides (mask prompts included).
                        binarize = np.array([1.0 if self.options.binarize_memory else 0.0], np.float32)
                        out.maskmem_bf16 = self._encode_memory(
                            frame, high_res, binarize, np.array([[out.object_score]], np.float32)
                        )[0]
                    store[frame] = out
                pending.clear()
            for frame in track.cond:
                track.non_cond.pop(frame, None)

    # -- one frame ----------------------------------------------------------------------
    def _infer(
        self,
        frame: int,
        tracks: Sequence[ObjectTrack],
        prompts: Sequence[ModelPoints | None],
        prev_logits: Sequence[np.ndarray | None],
        *,
        is_init: bool,
        reverse: bool,
        encode_memory: bool,
    ) -> list[FrameOutput]:
        batch = len(tracks)
        banks = [
            empty_memory()
            if is_init
            else gather_memory(frame, _memories(t.cond), _memories(t.non_cond), self.num_frames, reverse)
            for t in tracks
        ]
        memory_inputs = batch_memory(banks, [is_init] * batch, min_slots=self.options.memory_slots)
        if encode_memory and self.backend.fused_track_step:
            return self._fused_track_step(frame, batch, memory_inputs)
        features = self.features.get(frame)
        pix_feat = self.backend.run(
            Stage.MEMORY_ATTENTION, {"feat_s2": _repeat(features.feat_s2, batch), **memory_inputs}
        )["pix_feat"]
        heads = self.backend.run(
            Stage.SAM_HEADS,
            {
                "pix_feat": pix_feat,
                "feat_s0": _repeat(features.feat_s0, batch),
                "feat_s1": _repeat(features.feat_s1, batch),
                **prompt_inputs(prompts, prev_logits),
            },
        )
        # All rows of a batch share the point count: propagation has none, a prompt is one object.
        num_points = 0 if prompts[0] is None else prompts[0].count
        chosen = choose_mask(
            heads["low_res_masks"],
            heads["iou_scores"],
            heads["obj_ptrs"],
            heads["object_score_logits"],
            use_multimask(is_init, num_points),
        )
        memories: list[np.ndarray | None] = [None] * batch
        if encode_memory:
            high_res = resize_bilinear(chosen.low_res, (IMAGE_SIZE, IMAGE_SIZE))
            binarize = np.array([p is not None and self.options.binarize_memory for p in prompts], np.float32)
            memories = list(self._encode_memory(frame, high_res, binarize, chosen.object_score_logits))
        # sam2 fills holes after the memory is encoded, so only the stored prediction is filled.
        stored = fill_holes(chosen.low_res, self.options.fill_hole_area)
        return [
            FrameOutput(stored[i, 0], chosen.obj_ptr[i], float(chosen.object_score_logits[i, 0]), memories[i])
            for i in range(batch)
        ]

    def _fused_track_step(self, frame: int, batch: int, memory_inputs: dict[str, np.ndarray]) -> list[FrameOutput]:
        """A tracked frame in one backend call (Triton's ensemble): features never leave the server.

        The slice goes once for all ``batch`` objects: the ensemble encodes it once and repeats the features."""
        out = self.backend.run(
            Stage.TRACK_STEP,
            {
                "image": self._inputs[frame : frame + 1],
                **memory_inputs,
                **prompt_inputs([None] * batch, [None] * batch),
            },
        )
        memories = to_bfloat16_bits(out["maskmem_features"])
        stored = fill_holes(out["chosen_mask"], self.options.fill_hole_area)
        scores = out["object_score_logits"]
        return [
            FrameOutput(stored[i, 0], out["chosen_obj_ptr"][i], float(scores[i, 0]), memories[i]) for i in range(batch)
        ]

    def _mask_as_output(self, frame: int, mask: np.ndarray) -> FrameOutput:
        """sam2's ``_use_mask_as_output``: the mask is the prediction; the decoder only gives the pointer."""
        features = self.features.get(frame)
        high_res = mask * np.float32(MASK_PROMPT_SCALE) + np.float32(MASK_PROMPT_BIAS)
        low_res = resize_antialiased(high_res, (LOW_RES, LOW_RES))
        mask_input = self.backend.run(Stage.MASK_DOWNSAMPLER, {"mask": mask[None, None]})["mask_input"]
        heads = self.backend.run(
            Stage.SAM_HEADS,
            {
                "pix_feat": features.feat_s2,  # no memory conditioning on this path
                "feat_s0": features.feat_s0,
                "feat_s1": features.feat_s1,
                **prompt_inputs([None], [mask_input[0, 0]]),
            },
        )
        # The mask is non-empty (checked), so sam2 keeps the decoder's token-0 pointer and scores +10.
        low_res = fill_holes(low_res, self.options.fill_hole_area)
        return FrameOutput(low_res, heads["obj_ptrs"][0, 0], MASK_PROMPT_SCALE + MASK_PROMPT_BIAS)

    def _encode_memory(self, frame: int, high_res: np.ndarray, binarize: np.ndarray, scores: np.ndarray) -> np.ndarray:
        features = self.features.get(frame)
        batch = high_res.shape[0]
        maskmem = self.backend.run(
            Stage.MEMORY_ENCODER,
            {
                "feat_s2": _repeat(features.feat_s2, batch),
                "mask_logits": high_res.astype(np.float32),
                "binarize": binarize,
                "object_score_logits": scores.astype(np.float32),
            },
        )["maskmem_features"]
        return to_bfloat16_bits(maskmem)

    def _encode(self, frame: int) -> FrameFeatures:
        out = self.backend.run(Stage.IMAGE_ENCODER, {"image": self._inputs[frame : frame + 1]})
        return FrameFeatures(out["feat_s0"], out["feat_s1"], out["feat_s2"])

    # -- results and resets -------------------------------------------------------------
    @property
    def frames(self) -> np.ndarray:
        """The study's windowed uint8 slices [N, H, W] (or RGB frames [N, H, W, 3]) as given (read-only)."""
        view = self._frames.view()
        view.flags.writeable = False
        return view

    def result(self, frame: int, skip: set[int] | frozenset[int] = frozenset()) -> FrameResult:
        """Every object's current logits on ``frame`` (-1024 where it has none)."""
        ids = tuple(self.objects)
        logits = np.full((len(ids), LOW_RES, LOW_RES), NO_OBJECT_SCORE, np.float32)
        scores = [float(NO_OBJECT_SCORE)] * len(ids)
        for i, obj_id in enumerate(ids):
            out = None if obj_id in skip else self.objects[obj_id].output(frame)
            if out is not None:
                logits[i] = out.low_res
                scores[i] = out.object_score
        return FrameResult(frame, ids, logits, tuple(scores), self.options.non_overlapping_objects)

    def reset(self, obj_id: int | None = None) -> None:
        """Forget one object (prompts and results), or every object."""
        if obj_id is None:
            self.objects.clear()
        elif obj_id not in self.objects:
            raise NotFound(
                f"unknown object id {obj_id}: known ids are {sorted(self.objects)}",
                reason="OBJECT_NOT_FOUND",
                field="object_id",
            )
        else:
            del self.objects[obj_id]
        self._pin_prompted()

    def snapshot(self) -> dict[int, ObjectTrack]:
        """Every object's state as it is now, for ``restore`` (copies that later calls do not change)."""
        return {obj_id: track.copy() for obj_id, track in self.objects.items()}

    def restore(self, snapshot: dict[int, ObjectTrack]) -> None:
        """Put back the object state a ``snapshot`` took (a change that failed leaves no trace)."""
        self.objects = {obj_id: track.copy() for obj_id, track in snapshot.items()}
        self._pin_prompted()

    def _pin_prompted(self) -> None:
        """Keep the features of prompted frames cached (they are decoded again), and only those."""
        self.features.unpin_all()
        for track in self.objects.values():
            for frame in (*track.points, *track.masks):
                self.features.pin(frame)

    def close(self) -> None:
        """Free the frames, features and object state now; the tracker cannot track afterwards.

        The feature cache calls back into the tracker (``self._encode``): a reference cycle that, left alone,
        keeps a closed study's arrays until a full garbage collection.
        """
        self.objects.clear()
        self.features.clear()
        self.features = FeatureCache(_closed_study, 0)
        self._inputs = np.empty((0, 1, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
        self._frames = np.empty((0, *self._frames.shape[1:]), np.uint8)

    @property
    def state_bytes(self) -> int:
        """Bytes of per-object state, cached features and the slices."""
        slices = self._inputs.nbytes + (0 if self._frames.base is self._inputs else self._frames.nbytes)
        return sum(t.nbytes for t in self.objects.values()) + self.features.nbytes + slices


def _closed_study(frame: int) -> FrameFeatures:
    raise PreconditionFailed(f"the study was closed: frame {frame} is gone")


def _memories(store: dict[int, FrameOutput]) -> dict[int, FrameMemory]:
    return {frame: out.memory() for frame, out in store.items() if out.maskmem_bf16 is not None}


def _repeat(x: np.ndarray, batch: int) -> np.ndarray:
    return x if batch == 1 else np.repeat(x, batch, axis=0)
