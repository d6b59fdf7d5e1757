"""What every in-process backend shares: readiness, and refusing what only Triton runs before any work."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from medsam2.engine.backend import check_inputs
from medsam2.errors import BackendUnavailable
from medsam2.graphs import GRAPHS, Stage


class EmbeddedBackend:
    """Base of the in-process backends (ONNX Runtime, OpenVINO): they run single graphs, never ensembles."""

    fused_track_step = False

    def is_ready(self) -> bool:
        """In-process graphs are ready once constructed."""
        return True

    @staticmethod
    def check_call(stage: Stage, inputs: Mapping[str, np.ndarray]) -> None:
        """``InvalidInput`` for tensors off the contract; ``BackendUnavailable`` for a Triton-only ensemble."""
        if stage not in GRAPHS:
            raise BackendUnavailable(
                f"{stage.value} is a Triton ensemble; the embedded backend runs its graphs one by one"
            )
        check_inputs(stage, inputs)
