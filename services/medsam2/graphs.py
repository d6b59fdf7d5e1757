"""The stage graphs' contract: names, dtypes and shapes of every input and output.

Export writes graphs that match this table, backends check tensors against it
before a call, and the Triton model-repository writer turns it into
``config.pbtxt``.  ``-1`` marks the batch axis (always axis 0), the number of
memory slots of the memory attention, and the image's channels (1 for grey, 3
for RGB).  Everything else is static.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum

import ml_dtypes
import numpy as np

IMAGE_SIZE = 512
"""Side of the square model input, in pixels."""
LOW_RES = IMAGE_SIZE // 4
"""Side of the mask decoder's low-resolution logits (stride 4)."""
FEAT = IMAGE_SIZE // 16
"""Side of the stride-16 feature grid (32 at 512)."""
HIDDEN_DIM = 256
MEM_DIM = 64
NUM_MASKMEM = 7
"""Memory slots the model was trained with: conditioning frames plus 6 recent frames."""
MAX_COND_FRAMES = 4
"""Documented cap on conditioning frames attended at once (sam2's own default is unlimited)."""
MAX_MEMORY_SLOTS = MAX_COND_FRAMES + NUM_MASKMEM - 1
"""Upper bound of the dynamic memory-slot axis (TensorRT profile maximum)."""
MAX_OBJ_PTRS = 16
"""sam2's max_obj_ptrs_in_encoder: pointers of up to 15 recent frames plus the conditioning frames'."""
OBJ_PTR_SLOTS = MAX_COND_FRAMES + MAX_OBJ_PTRS - 1
"""Object-pointer slots in the memory attention graph."""
MAX_POINTS = 16
"""Point slots per object and frame in the SAM heads; a box uses two."""
NUM_MASK_TOKENS = 4
"""Mask outputs of the decoder: index 0 is the single-mask token, 1-3 the multimask tokens."""

POINT_LABEL_UNUSED = -2
"""Label of an empty point slot: masked out of attention, so it changes nothing."""
POINT_LABEL_PAD = -1
"""sam2's 'not a point' label."""
POINT_LABEL_NEGATIVE = 0
POINT_LABEL_POSITIVE = 1
POINT_LABEL_BOX_TOP_LEFT = 2
POINT_LABEL_BOX_BOTTOM_RIGHT = 3

IMAGE_CHANNELS = (1, 3)
"""Channels an image may have: grey (replicated to RGB inside the graph, as sam2's loader does) or RGB."""

GRAPHS_REVISION = 5
"""Bumped whenever the exported graphs change numerically or structurally, so cached exports are redone."""

BATCH = -1
SLOTS = -1
CHANNELS = -1


class Stage(str, Enum):
    """One exported graph."""

    IMAGE_ENCODER = "image_encoder"
    MEMORY_ATTENTION = "memory_attention"
    SAM_HEADS = "sam_heads"
    MEMORY_ENCODER = "memory_encoder"
    MASK_DOWNSAMPLER = "mask_downsampler"
    MASK_SELECT = "mask_select"
    TRACK_STEP = "track_step"
    MEMORY_UNPACK = "memory_unpack"
    FEATURE_BROADCAST = "feature_broadcast"


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One named tensor of a graph: dtype and shape, ``-1`` for dynamic axes."""

    name: str
    dtype: type[np.generic]
    shape: tuple[int, ...]
    doc: str

    @property
    def dynamic_axes(self) -> tuple[int, ...]:
        """Indices of the axes that are not fixed."""
        return tuple(i for i, d in enumerate(self.shape) if d < 0)

    def check(self, array: np.ndarray) -> None:
        """Raise ``ValueError`` naming this tensor if ``array`` does not fit it."""
        if array.dtype != self.dtype:
            raise ValueError(f"{self.name}: expected dtype {np.dtype(self.dtype).name}, got {array.dtype.name}")
        if array.ndim != len(self.shape):
            raise ValueError(f"{self.name}: expected {len(self.shape)} dims {self.shape}, got shape {array.shape}")
        for want, got in zip(self.shape, array.shape, strict=False):
            if want >= 0 and want != got:
                raise ValueError(f"{self.name}: expected shape {self.shape}, got {array.shape}")


@dataclass(frozen=True, slots=True)
class GraphSpec:
    """Inputs and outputs of one stage graph."""

    stage: Stage
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    doc: str
    batched: bool = True
    """Whether Triton batches it on axis 0. A graph that is not (``max_batch_size: 0``, full dims) may take
    tensors whose first axis is not the batch: ``track_step``'s one image for every object of the slice."""

    def input(self, name: str) -> TensorSpec:
        """The input called ``name``."""
        return next(t for t in self.inputs if t.name == name)

    def output(self, name: str) -> TensorSpec:
        """The output called ``name``."""
        return next(t for t in self.outputs if t.name == name)


F32, I32, I64, U8 = np.float32, np.int32, np.int64, np.uint8
BF16: type[np.generic] = ml_dtypes.bfloat16
"""bfloat16 (``ml_dtypes``, as tritonclient takes it): only on the wire to Triton, never in a stage graph."""

_FEAT_S0 = TensorSpec(
    "feat_s0", F32, (BATCH, 32, LOW_RES, LOW_RES), "stride-4 features, projected by the decoder's conv_s0"
)
_FEAT_S1 = TensorSpec(
    "feat_s1", F32, (BATCH, 64, 2 * FEAT, 2 * FEAT), "stride-8 features, projected by the decoder's conv_s1"
)
_FEAT_S2 = TensorSpec("feat_s2", F32, (BATCH, HIDDEN_DIM, FEAT, FEAT), "stride-16 backbone features")

IMAGE_ENCODER = GraphSpec(
    Stage.IMAGE_ENCODER,
    inputs=(
        TensorSpec(
            "image",
            U8,
            (BATCH, CHANNELS, IMAGE_SIZE, IMAGE_SIZE),
            "grey (1 channel) or RGB (3 channels) slice already resized to 512x512",
        ),
    ),
    outputs=(_FEAT_S0, _FEAT_S1, _FEAT_S2),
    doc="Hiera-T + FPN; normalisation (/255, ImageNet mean/std) and grey-to-RGB inside.",
)

MEMORY_ATTENTION = GraphSpec(
    Stage.MEMORY_ATTENTION,
    inputs=(
        _FEAT_S2,
        TensorSpec("memory", F32, (BATCH, SLOTS, MEM_DIM, FEAT, FEAT), "spatial memories (memory-encoder outputs)"),
        TensorSpec(
            "memory_tpos",
            I64,
            (BATCH, SLOTS),
            "sam2 t_pos of each memory: 0 for conditioning frames, 1..6 for recent ones",
        ),
        TensorSpec("memory_valid", F32, (BATCH, SLOTS), "1 for a real memory, 0 for an empty slot"),
        TensorSpec("obj_ptrs", F32, (BATCH, OBJ_PTR_SLOTS, HIDDEN_DIM), "object pointers of earlier frames"),
        TensorSpec(
            "obj_ptr_tpos",
            F32,
            (BATCH, OBJ_PTR_SLOTS),
            "signed frame distance of each pointer divided by (max pointers - 1)",
        ),
        TensorSpec("obj_ptr_valid", F32, (BATCH, OBJ_PTR_SLOTS), "1 for a real pointer, 0 for an empty slot"),
        TensorSpec(
            "no_memory",
            F32,
            (BATCH,),
            "1 on an initial conditioning frame: add the no-memory embedding instead of attending",
        ),
    ),
    outputs=(TensorSpec("pix_feat", F32, (BATCH, HIDDEN_DIM, FEAT, FEAT), "memory-conditioned stride-16 features"),),
    doc="4-layer memory attention with real-valued RoPE; spatial and temporal encodings inside.",
)

SAM_HEADS = GraphSpec(
    Stage.SAM_HEADS,
    inputs=(
        TensorSpec("pix_feat", F32, (BATCH, HIDDEN_DIM, FEAT, FEAT), "memory-conditioned stride-16 features"),
        _FEAT_S0,
        _FEAT_S1,
        TensorSpec("point_coords", F32, (BATCH, MAX_POINTS, 2), "(x, y) in 512-pixel model-input coordinates"),
        TensorSpec("point_labels", I32, (BATCH, MAX_POINTS), "sam2 labels; -2 marks an unused slot"),
        TensorSpec("mask_input", F32, (BATCH, 1, LOW_RES, LOW_RES), "low-resolution mask prompt (logits)"),
        TensorSpec(
            "has_mask_input", F32, (BATCH,), "1 when mask_input is a real prompt, 0 to use the no-mask embedding"
        ),
    ),
    outputs=(
        TensorSpec(
            "low_res_masks", F32, (BATCH, NUM_MASK_TOKENS, LOW_RES, LOW_RES), "raw mask logits of all four tokens"
        ),
        TensorSpec("iou_scores", F32, (BATCH, NUM_MASK_TOKENS), "predicted IoU of each mask"),
        TensorSpec(
            "obj_ptrs",
            F32,
            (BATCH, NUM_MASK_TOKENS, HIDDEN_DIM),
            "object pointer of each token, no-object mixing applied",
        ),
        TensorSpec("object_score_logits", F32, (BATCH, 1), "object presence logit"),
    ),
    doc="Prompt encoder + two-way mask decoder + object-pointer projection; mask choice happens outside.",
)

MEMORY_ENCODER = GraphSpec(
    Stage.MEMORY_ENCODER,
    inputs=(
        _FEAT_S2,
        TensorSpec("mask_logits", F32, (BATCH, 1, IMAGE_SIZE, IMAGE_SIZE), "chosen mask logits at 512x512"),
        TensorSpec("binarize", F32, (BATCH,), "1 to threshold the mask at 0 (mask came from clicks), 0 for sigmoid"),
        TensorSpec("object_score_logits", F32, (BATCH, 1), "object presence logit; <= 0 adds the no-object embedding"),
    ),
    outputs=(TensorSpec("maskmem_features", F32, (BATCH, MEM_DIM, FEAT, FEAT), "this frame's memory entry"),),
    doc="Mask downsampler + fuser + projection; sigmoid scale/bias and no-object embedding inside.",
)

MASK_DOWNSAMPLER = GraphSpec(
    Stage.MASK_DOWNSAMPLER,
    inputs=(TensorSpec("mask", F32, (BATCH, 1, IMAGE_SIZE, IMAGE_SIZE), "binary mask prompt at 512x512"),),
    outputs=(
        TensorSpec("mask_input", F32, (BATCH, 1, LOW_RES, LOW_RES), "learned 4x downsampling, fed to the SAM heads"),
    ),
    doc="sam2's mask_downsample convolution, used when a mask is the prompt.",
)

MASK_SELECT = GraphSpec(
    Stage.MASK_SELECT,
    inputs=(
        TensorSpec(
            "low_res_masks", F32, (BATCH, NUM_MASK_TOKENS, LOW_RES, LOW_RES), "raw mask logits of all four tokens"
        ),
        TensorSpec("iou_scores", F32, (BATCH, NUM_MASK_TOKENS), "predicted IoU of each mask"),
        TensorSpec("obj_ptrs", F32, (BATCH, NUM_MASK_TOKENS, HIDDEN_DIM), "object pointer of each token"),
        TensorSpec("object_score_logits", F32, (BATCH, 1), "object presence logit"),
    ),
    outputs=(
        TensorSpec("chosen_mask", F32, (BATCH, 1, LOW_RES, LOW_RES), "kept low-res logits, -1024 where absent"),
        TensorSpec("chosen_obj_ptr", F32, (BATCH, HIDDEN_DIM), "object pointer of the kept mask"),
        TensorSpec(
            "mask_logits",
            F32,
            (BATCH, 1, IMAGE_SIZE, IMAGE_SIZE),
            "kept logits upsampled to 512 for the memory encoder",
        ),
        TensorSpec("binarize", F32, (BATCH,), "always 0 on tracked frames (sigmoid memory)"),
    ),
    doc="sam2's mask choice for a tracked frame (multimask argmax of IoU), only for the fused track step.",
)

TRACK_STEP = GraphSpec(
    Stage.TRACK_STEP,
    inputs=(
        TensorSpec(
            "image",
            U8,
            (1, -1, IMAGE_SIZE, IMAGE_SIZE),
            "the slice (grey or RGB), once for every object: encoded once per slice",
        ),
        *MEMORY_ATTENTION.inputs[1:],
        *SAM_HEADS.inputs[3:],
    ),
    outputs=(
        MASK_SELECT.output("chosen_mask"),
        MASK_SELECT.output("chosen_obj_ptr"),
        SAM_HEADS.output("object_score_logits"),
        MEMORY_ENCODER.output("maskmem_features"),
    ),
    doc="One tracked frame in one call: encoder (once), memory attention, SAM heads, mask choice, memory encoder.",
    batched=False,
)

GRAPHS: dict[Stage, GraphSpec] = {
    g.stage: g for g in (IMAGE_ENCODER, MEMORY_ATTENTION, SAM_HEADS, MEMORY_ENCODER, MASK_DOWNSAMPLER, MASK_SELECT)
}
"""Every stage graph, by stage."""

ENSEMBLES: dict[Stage, GraphSpec] = {TRACK_STEP.stage: TRACK_STEP}
"""Compositions of graphs that Triton runs as one request, so features never leave the server."""

_SLICE_FEATURES = {name: f"slice_{name}" for name in ("feat_s0", "feat_s1", "feat_s2")}

TRACK_STEP_WIRING: tuple[tuple[Stage, dict[str, str], dict[str, str]], ...] = (
    (Stage.IMAGE_ENCODER, {"image": "image"}, _SLICE_FEATURES),
    (
        Stage.FEATURE_BROADCAST,
        {**_SLICE_FEATURES, "rows": "memory_valid"},
        {f"rows_{name}": name for name in _SLICE_FEATURES},
    ),
    (Stage.MEMORY_ATTENTION, {t.name: t.name for t in MEMORY_ATTENTION.inputs}, {"pix_feat": "pix_feat"}),
    (
        Stage.SAM_HEADS,
        {t.name: t.name for t in SAM_HEADS.inputs},
        {
            "low_res_masks": "low_res_masks",
            "iou_scores": "iou_scores",
            "obj_ptrs": "token_obj_ptrs",
            "object_score_logits": "object_score_logits",
        },
    ),
    (
        Stage.MASK_SELECT,
        {**{t.name: t.name for t in MASK_SELECT.inputs}, "obj_ptrs": "token_obj_ptrs"},
        {
            "chosen_mask": "chosen_mask",
            "chosen_obj_ptr": "chosen_obj_ptr",
            "mask_logits": "mask_logits",
            "binarize": "binarize",
        },
    ),
    (Stage.MEMORY_ENCODER, {t.name: t.name for t in MEMORY_ENCODER.inputs}, {"maskmem_features": "maskmem_features"}),
)
"""The track-step ensemble: (stage, {stage input: ensemble tensor}, {stage output: ensemble tensor}) in order.

The slice is encoded once, then its features are repeated for every object's row (``feature_broadcast``)."""


# ---------------------------------------------------------------------------------------------
# Triton's wire: the dtypes tensors cross the network in, where they are narrower than the graphs compute in.
# The stage graphs above stay as they are (every backend runs them); Triton casts back inside the ensemble.

MEMORY_UNPACK = GraphSpec(
    Stage.MEMORY_UNPACK,
    inputs=(TensorSpec("memory", BF16, (BATCH, SLOTS, MEM_DIM, FEAT, FEAT), "spatial memories in bfloat16"),),
    outputs=(TensorSpec("memory_f32", F32, (BATCH, SLOTS, MEM_DIM, FEAT, FEAT), "the same memories in float32"),),
    doc="A Cast, exact: the engine stores memories in bfloat16 (as sam2 does), so they travel as bfloat16.",
)

FEATURE_BROADCAST = GraphSpec(
    Stage.FEATURE_BROADCAST,
    inputs=(
        *(replace(t, doc=f"{t.doc}, of the one slice (batch 1)") for t in IMAGE_ENCODER.outputs),
        TensorSpec("rows", F32, (BATCH, SLOTS), "any tensor with one row per object (the memory validity)"),
    ),
    outputs=tuple(
        replace(t, name=f"rows_{t.name}", doc=f"{t.doc}, repeated for every row") for t in IMAGE_ENCODER.outputs
    ),
    doc="An Expand: the slice's features once per object, so the encoder runs once per slice, not per object.",
    batched=False,
)

TRITON_GRAPHS: dict[Stage, GraphSpec] = {MEMORY_UNPACK.stage: MEMORY_UNPACK, FEATURE_BROADCAST.stage: FEATURE_BROADCAST}
"""Graphs only Triton's repository has (built from this table, no checkpoint): they turn wire dtypes back, and
repeat one slice's features for every object."""

WIRE_DTYPES: dict[Stage, dict[str, type[np.generic]]] = {Stage.TRACK_STEP: {"memory": BF16}}
"""Per ensemble, inputs that cross the network narrower than the contract: 2.5 MB of memories per object and
slice in float32 with 7 memories, half of that in bfloat16."""

TRITON_ENSEMBLES: dict[Stage, GraphSpec] = {
    stage: replace(
        spec, inputs=tuple(replace(t, dtype=WIRE_DTYPES.get(stage, {}).get(t.name, t.dtype)) for t in spec.inputs)
    )
    for stage, spec in ENSEMBLES.items()
}
"""The ensembles as Triton declares them: ``ENSEMBLES`` with the wire dtypes of ``WIRE_DTYPES``."""

PINNED_ENSEMBLE_SUFFIX = "_v"
"""``<ensemble>_v<N>``: an ensemble whose steps run version N of every graph (Triton's steps take one version each)."""


def pinned_ensemble_name(ensemble: str, version: int) -> str:
    """The name of ``ensemble`` pinned to model version ``version`` (e.g. ``track_step_v2``).

    A Triton ensemble's config names one version per step, and a model has one config for all its versions, so
    ``track_step`` (steps at ``-1``, the newest) cannot serve a session pinned to an older version; each exported
    version therefore gets an ensemble of its own.
    """
    if version < 1:
        raise ValueError(f"model versions start at 1, got {version}")
    return f"{ensemble}{PINNED_ENSEMBLE_SUFFIX}{version}"


def pinned_ensemble_version(name: str, ensemble: str) -> int | None:
    """The version ``name`` pins ``ensemble`` to, or None when it is not such a name."""
    prefix = ensemble + PINNED_ENSEMBLE_SUFFIX
    tail = name[len(prefix) :] if name.startswith(prefix) else ""
    return int(tail) if tail.isdigit() and not tail.startswith("0") else None


TRITON_TRACK_STEP_WIRING: tuple[tuple[Stage, dict[str, str], dict[str, str]], ...] = (
    (Stage.MEMORY_UNPACK, {"memory": "memory"}, {"memory_f32": "memory_f32"}),
    *(
        (stage, {**inputs, "memory": "memory_f32"} if stage is Stage.MEMORY_ATTENTION else inputs, outputs)
        for stage, inputs, outputs in TRACK_STEP_WIRING
    ),
)
"""The track-step ensemble in Triton: the memories are cast back to float32 first, then ``TRACK_STEP_WIRING``."""
