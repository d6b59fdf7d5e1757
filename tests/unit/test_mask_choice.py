"""sam2's choice among the SAM heads' four masks."""

from __future__ import annotations

import numpy as np

from medsam2.engine.mask_choice import NO_OBJECT_SCORE, choose_mask, stability_scores, use_multimask


def heads(batch: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    masks = np.stack([np.full((batch, 8, 8), float(k)) for k in range(4)], axis=1).astype(np.float32)
    iou = np.tile(np.array([0.9, 0.2, 0.7, 0.4], np.float32), (batch, 1))
    pointers = np.tile(np.arange(4, dtype=np.float32)[None, :, None], (batch, 1, 3))
    present = np.ones((batch, 1), np.float32)
    return masks, iou, pointers, present


def test_multimask_takes_the_best_multimask_token_and_its_pointer() -> None:
    chosen = choose_mask(*heads(), multimask=True)
    assert (chosen.low_res == 2).all() and (chosen.obj_ptr == 2).all() and np.allclose(chosen.iou, 0.7)


def test_single_mask_keeps_a_stable_token_zero_and_always_pointer_zero() -> None:
    masks, iou, pointers, present = heads()
    masks[:, 0] = 5.0  # far from the +-0.05 band: stable
    chosen = choose_mask(masks, iou, pointers, present, multimask=False)
    assert (chosen.low_res == 5).all() and (chosen.obj_ptr == 0).all()


def test_single_mask_falls_back_to_the_best_multimask_when_token_zero_is_unstable() -> None:
    masks, iou, pointers, present = heads()
    masks[:, 0] = 0.0  # everything inside the band: stability 0
    chosen = choose_mask(masks, iou, pointers, present, multimask=False)
    assert (chosen.low_res == 2).all() and (chosen.obj_ptr == 0).all()


def test_absent_objects_get_the_no_object_score() -> None:
    masks, iou, pointers, _ = heads()
    chosen = choose_mask(masks, iou, pointers, np.array([[1.0], [-1.0]], np.float32), multimask=True)
    assert (chosen.low_res[0] == 2).all() and (chosen.low_res[1] == NO_OBJECT_SCORE).all()


def test_stability_of_an_empty_mask_is_one() -> None:
    assert stability_scores(np.full((1, 4, 4), -9.0, np.float32))[0] == 1.0


def test_multimask_only_for_zero_or_one_point() -> None:
    assert use_multimask(True, 0) and use_multimask(False, 1) and not use_multimask(True, 2)
