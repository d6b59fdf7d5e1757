"""Engine against sam2's SAM2VideoPredictor on the same checkpoint: the issue's parity targets."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medsam2.backends.onnxruntime_backend import OnnxRuntimeBackend
from medsam2.engine.tracker import Direction, Tracker
from medsam2_export.parity import PARITY_OPTIONS, run_parity, synthetic_volume
from medsam2_export.reference import ReferenceTracker

LOGIT_TOLERANCE = 1e-3
MASK_TOLERANCE = 1e-3  # 0.1% of pixels


def test_parity_present_both_protocols(checkpoints: dict[str, Path], graphs: dict[str, Path]) -> None:
    backend = OnnxRuntimeBackend(graphs["present"], threads=2)
    report = run_parity(backend, checkpoints["present"], seed=4, slices=10)
    steps = {s["step"] for s in report.steps}
    assert {"3d/forward", "3d/backward", "in-state/correction", "in-state/resume", "in-state/backward"} <= steps
    assert report.objects == 2 and report.frames >= 25
    assert report.max_abs_logit_diff <= LOGIT_TOLERANCE, report.to_json(with_steps=True)
    assert report.max_mask_disagreement <= MASK_TOLERANCE, report.to_json(with_steps=True)


def test_parity_absent_checkpoint(checkpoints: dict[str, Path], graphs: dict[str, Path]) -> None:
    backend = OnnxRuntimeBackend(graphs["absent"], threads=2)
    report = run_parity(backend, checkpoints["absent"], seed=2, slices=8, scenarios=("medsam2-3d",))
    assert report.max_abs_logit_diff <= LOGIT_TOLERANCE
    assert report.max_mask_disagreement <= MASK_TOLERANCE


def test_mask_prompt_matches_reference(checkpoints: dict[str, Path], graphs: dict[str, Path]) -> None:
    frames, _ = synthetic_volume(seed=9, slices=6, height=60, width=52)
    mask = np.zeros(frames.shape[1:], bool)
    mask[20:41, 10:30] = True
    ours = Tracker(OnnxRuntimeBackend(graphs["present"], threads=2), frames, PARITY_OPTIONS)
    ref = ReferenceTracker(checkpoints["present"], frames)
    got = ours.add_mask(1, 2, mask).low_res[0]
    want = ref.add_mask(1, 2, mask)[1]
    assert np.max(np.abs(got - want)) <= LOGIT_TOLERANCE
    for result, (frame, ref_low, _) in zip(
        ours.propagate(Direction.FORWARD, start=2), ref.propagate(start=2), strict=False
    ):
        assert result.frame == frame
        assert np.max(np.abs(result.low_res[0] - ref_low[1])) <= LOGIT_TOLERANCE, frame
