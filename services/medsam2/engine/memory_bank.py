"""Which memories and object pointers a frame attends to, as sam2 1.1.0 chooses them.

Pure bookkeeping: given one object's stored frame outputs, build the
fixed-shape inputs of the memory attention graph.  Mirrors
``SAM2Base._prepare_memory_conditioned_features`` (eval mode, temporal stride
1, signed pointer encodings, pointers only from the past).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from medsam2.engine.resize import from_bfloat16_bits
from medsam2.graphs import FEAT, HIDDEN_DIM, MAX_COND_FRAMES, MAX_OBJ_PTRS, MEM_DIM, NUM_MASKMEM, OBJ_PTR_SLOTS


@dataclass(frozen=True, slots=True)
class FrameMemory:
    """What one tracked or prompted frame leaves behind for one object."""

    maskmem: np.ndarray
    """Memory-encoder output [64, 32, 32]: float32, or bfloat16 bits as uint16 (how sam2 stores it)."""
    obj_ptr: np.ndarray
    """Object pointer [256] float32."""

    def maskmem_f32(self) -> np.ndarray:
        """The memory as float32 (widened from bfloat16 when stored that way)."""
        return from_bfloat16_bits(self.maskmem) if self.maskmem.dtype == np.uint16 else self.maskmem


@dataclass(frozen=True, slots=True)
class MemoryInputs:
    """One object's memory-attention inputs for one frame (no batch axis)."""

    memory: np.ndarray  # [S, 64, 32, 32]
    memory_tpos: np.ndarray  # [S] int64
    obj_ptrs: np.ndarray  # [OBJ_PTR_SLOTS, 256]
    obj_ptr_tpos: np.ndarray  # [OBJ_PTR_SLOTS] float32
    obj_ptr_valid: np.ndarray  # [OBJ_PTR_SLOTS] float32

    @property
    def num_memories(self) -> int:
        """Number of spatial memories (the slot axis)."""
        return int(self.memory.shape[0])


def select_closest_cond_frames(
    frame_idx: int, cond: Mapping[int, FrameMemory], max_cond: int
) -> tuple[dict[int, FrameMemory], dict[int, FrameMemory]]:
    """sam2's rule: the nearest conditioning frame before and after, then the temporally closest."""
    if max_cond < 0 or len(cond) <= max_cond:
        return dict(cond), {}
    selected: dict[int, FrameMemory] = {}
    before = max((t for t in cond if t < frame_idx), default=None)
    if before is not None:
        selected[before] = cond[before]
    after = min((t for t in cond if t >= frame_idx), default=None)
    if after is not None:
        selected[after] = cond[after]
    remaining = sorted((t for t in cond if t not in selected), key=lambda t: abs(t - frame_idx))
    for t in remaining[: max(0, max_cond - len(selected))]:
        selected[t] = cond[t]
    unselected = {t: v for t, v in cond.items() if t not in selected}
    return selected, unselected


def gather_memory(
    frame_idx: int,
    cond: Mapping[int, FrameMemory],
    non_cond: Mapping[int, FrameMemory],
    num_frames: int,
    reverse: bool,
    max_cond: int = MAX_COND_FRAMES,
) -> MemoryInputs:
    """The memory bank a non-initial frame attends to, ready for the memory attention graph."""
    if not cond:
        raise ValueError("a tracked frame needs at least one conditioning frame")
    selected, unselected = select_closest_cond_frames(frame_idx, cond, max_cond)
    step = 1 if reverse else -1  # towards the frames already tracked
    spatial: list[tuple[int, FrameMemory]] = [(0, out) for out in selected.values()]
    for t_pos in range(1, NUM_MASKMEM):
        prev = frame_idx + step * (NUM_MASKMEM - t_pos)
        out = non_cond.get(prev) or unselected.get(prev)
        if out is not None:
            spatial.append((t_pos, out))

    max_ptrs = min(num_frames, MAX_OBJ_PTRS)
    sign = -1 if reverse else 1
    pointers: list[tuple[int, np.ndarray]] = [
        ((frame_idx - t) * sign, out.obj_ptr)
        for t, out in selected.items()
        if (t >= frame_idx if reverse else t <= frame_idx)
    ]
    for t_diff in range(1, max_ptrs):
        t = frame_idx + step * t_diff
        if t < 0 or t >= num_frames:
            break
        out = non_cond.get(t) or unselected.get(t)
        if out is not None:
            pointers.append((t_diff, out.obj_ptr))
    return _pack(spatial, pointers, max_ptrs)


def _pack(
    spatial: list[tuple[int, FrameMemory]], pointers: list[tuple[int, np.ndarray]], max_ptrs: int
) -> MemoryInputs:
    memory = np.stack([m.maskmem_f32() for _, m in spatial]).astype(np.float32, copy=False)
    tpos = np.array([t for t, _ in spatial], dtype=np.int64)
    obj_ptrs = np.zeros((OBJ_PTR_SLOTS, HIDDEN_DIM), np.float32)
    ptr_tpos = np.zeros(OBJ_PTR_SLOTS, np.float32)
    ptr_valid = np.zeros(OBJ_PTR_SLOTS, np.float32)
    # sam2 divides the integer distance by (max pointers - 1) in float32.
    scale = np.float32(max(max_ptrs - 1, 1))
    for i, (pos, ptr) in enumerate(pointers[:OBJ_PTR_SLOTS]):
        obj_ptrs[i] = ptr
        ptr_tpos[i] = np.float32(pos) / scale
        ptr_valid[i] = 1.0
    return MemoryInputs(memory, tpos, obj_ptrs, ptr_tpos, ptr_valid)


def empty_memory() -> MemoryInputs:
    """Inputs for an initial conditioning frame, which attends to nothing."""
    return MemoryInputs(
        memory=np.zeros((1, MEM_DIM, FEAT, FEAT), np.float32),
        memory_tpos=np.zeros(1, np.int64),
        obj_ptrs=np.zeros((OBJ_PTR_SLOTS, HIDDEN_DIM), np.float32),
        obj_ptr_tpos=np.zeros(OBJ_PTR_SLOTS, np.float32),
        obj_ptr_valid=np.zeros(OBJ_PTR_SLOTS, np.float32),
    )


def batch_memory(items: list[MemoryInputs], no_memory: list[bool], *, min_slots: int = 0) -> dict[str, np.ndarray]:
    """Stack several objects' inputs, padding the slot axis with invalid memories (to at least ``min_slots``)."""
    slots = max(min_slots, *(m.num_memories for m in items))
    batch = len(items)
    memory = np.zeros((batch, slots, MEM_DIM, FEAT, FEAT), np.float32)
    tpos = np.zeros((batch, slots), np.int64)
    valid = np.zeros((batch, slots), np.float32)
    for b, m in enumerate(items):
        n = m.num_memories
        memory[b, :n] = m.memory
        tpos[b, :n] = m.memory_tpos
        valid[b, :n] = 0.0 if no_memory[b] else 1.0
    return {
        "memory": memory,
        "memory_tpos": tpos,
        "memory_valid": valid,
        "obj_ptrs": np.stack([m.obj_ptrs for m in items]),
        "obj_ptr_tpos": np.stack([m.obj_ptr_tpos for m in items]),
        "obj_ptr_valid": np.stack([m.obj_ptr_valid for m in items]),
        "no_memory": np.array([1.0 if f else 0.0 for f in no_memory], np.float32),
    }
