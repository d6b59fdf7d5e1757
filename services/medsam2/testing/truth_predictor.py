"""The ground truth as a predictor, so a test can check the scorer: a correct one gives DSC = NSD = 1."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medsam2.datasets.training_npz import TrainingCase
from medsam2.engine.protocols import ObjectPrompt


class TruthPredictor:
    """Test hook: answers every prompt with the ground truth itself, so a correct scorer gives DSC = NSD = 1."""

    name = "ground truth"

    def segment(self, case: TrainingCase, prompts: Sequence[ObjectPrompt]) -> dict[int, np.ndarray]:
        """The ground-truth mask of each prompted label."""
        return {p.obj_id: case.gts == p.obj_id for p in prompts}

    def close(self) -> None:
        """Nothing to release."""
