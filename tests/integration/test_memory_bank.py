"""Memory selection against sam2's own helper, beyond what the graph parity covers."""

from __future__ import annotations

import numpy as np
import pytest
from sam2.modeling.sam2_utils import select_closest_cond_frames as sam2_select

from medsam2.engine.memory_bank import FrameMemory, gather_memory, select_closest_cond_frames
from medsam2.graphs import MAX_OBJ_PTRS, OBJ_PTR_SLOTS


def _mem(i: int) -> FrameMemory:
    return FrameMemory(np.full((64, 32, 32), i, np.float32), np.full(256, i, np.float32))


@pytest.mark.parametrize("frame", [0, 7, 15, 33, 60])
@pytest.mark.parametrize("cap", [-1, 2, 3, 4])
def test_cond_frame_selection_matches_sam2(frame: int, cap: int) -> None:
    cond = {t: _mem(t) for t in (2, 9, 14, 30, 41, 55)}
    ours, ours_rest = select_closest_cond_frames(frame, cond, cap)
    ref, ref_rest = sam2_select(frame, cond, cap)
    assert list(ours) == list(ref) and list(ours_rest) == list(ref_rest)


def test_full_bank_forward() -> None:
    cond = {0: _mem(0)}
    non_cond = {t: _mem(t) for t in range(1, 30)}
    bank = gather_memory(30, cond, non_cond, num_frames=40, reverse=False)
    assert bank.memory_tpos.tolist() == [0, 1, 2, 3, 4, 5, 6]
    # t_pos 1 is the oldest of the six recent frames (24), t_pos 6 the previous frame (29).
    assert [int(m[0, 0, 0]) for m in bank.memory] == [0, 24, 25, 26, 27, 28, 29]
    # The conditioning frame's pointer plus the 15 most recent frames'.
    assert int(bank.obj_ptr_valid.sum()) == MAX_OBJ_PTRS
    assert bank.obj_ptrs.shape[0] == OBJ_PTR_SLOTS


def test_reverse_bank_uses_later_frames_and_signed_positions() -> None:
    cond = {20: _mem(20)}
    non_cond = {t: _mem(t) for t in range(11, 20)}
    bank = gather_memory(10, cond, non_cond, num_frames=40, reverse=True)
    assert int(bank.memory[0, 0, 0, 0]) == 20
    recent = [int(m[0, 0, 0]) for m in bank.memory[1:]]
    assert recent == [16, 15, 14, 13, 12, 11]
    # the conditioning frame is 10 frames ahead: tpos (10-20)*(-1)/15
    assert np.isclose(bank.obj_ptr_tpos[0], 10 / 15)


def test_future_cond_pointer_is_excluded_when_tracking_forward() -> None:
    cond = {0: _mem(0), 25: _mem(25)}
    bank = gather_memory(10, cond, {t: _mem(t) for t in range(1, 10)}, num_frames=40, reverse=False)
    ptr_ids = {int(p[0]) for p, v in zip(bank.obj_ptrs, bank.obj_ptr_valid, strict=False) if v}
    assert 25 not in ptr_ids and 0 in ptr_ids
    assert bank.num_memories == 2 + 6  # both cond frames still give spatial memories
