"""The track-step ensemble run in-process, graph after graph, by any backend.

Triton runs ``Stage.TRACK_STEP`` as an ensemble; this wrapper gives any other
backend the same capability from the same wiring table, so the fused path can
be checked against the stage-by-stage path without a server.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from medsam2.engine.backend import StageBackend, check_inputs
from medsam2.graphs import TRACK_STEP, TRACK_STEP_WIRING, Stage


class ComposedTrackStep:
    """Adds ``Stage.TRACK_STEP`` to a backend by chaining its graphs as the ensemble would."""

    fused_track_step = True
    precision = "fp32"

    def __init__(self, backend: StageBackend) -> None:
        self._backend = backend
        self.name = f"{backend.name}+composed"

    def run(self, stage: Stage, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run a graph, or the whole track step."""
        if stage is not Stage.TRACK_STEP:
            return self._backend.run(stage, inputs)
        check_inputs(stage, inputs)
        tensors = dict(inputs)
        for step, input_map, output_map in TRACK_STEP_WIRING:
            outputs = self._backend.run(step, {name: tensors[source] for name, source in input_map.items()})
            for name, target in output_map.items():
                tensors[target] = outputs[name]
        return {t.name: tensors[t.name] for t in TRACK_STEP.outputs}

    def is_ready(self) -> bool:
        """Whether the wrapped backend is."""
        return self._backend.is_ready()

    def close(self) -> None:
        """Close the wrapped backend."""
        self._backend.close()
