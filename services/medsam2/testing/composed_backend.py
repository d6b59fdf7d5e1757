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


def broadcast_features(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What Triton's ``feature_broadcast`` graph computes: the slice's features repeated once per row."""
    rows = inputs["rows"].shape[0]
    return {f"rows_{name}": np.repeat(inputs[name], rows, axis=0) for name in ("feat_s0", "feat_s1", "feat_s2")}


def compose_track_step(backend: StageBackend, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``TRACK_STEP_WIRING`` run step by step on ``backend`` (the broadcast in numpy): the ensemble's result."""
    tensors = dict(inputs)
    for step, input_map, output_map in TRACK_STEP_WIRING:
        feeds = {name: tensors[source] for name, source in input_map.items()}
        outputs = broadcast_features(feeds) if step is Stage.FEATURE_BROADCAST else backend.run(step, feeds)
        for name, target in output_map.items():
            tensors[target] = outputs[name]
    return {t.name: tensors[t.name] for t in TRACK_STEP.outputs}


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
        return compose_track_step(self._backend, inputs)

    def is_ready(self) -> bool:
        """Whether the wrapped backend is."""
        return self._backend.is_ready()

    def close(self) -> None:
        """Close the wrapped backend."""
        self._backend.close()
