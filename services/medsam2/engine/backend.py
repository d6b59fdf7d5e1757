"""The one protocol every inference backend implements: run a stage graph on named tensors."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import numpy as np

from medsam2.errors import InvalidInput
from medsam2.graphs import ENSEMBLES, GRAPHS, GraphSpec, Stage


@runtime_checkable
class StageBackend(Protocol):
    """Runs one stage graph on a batch; inputs and outputs follow ``medsam2.graphs``."""

    name: str
    """Short name for logs, metrics and benchmarks (e.g. ``onnxruntime``)."""

    @property
    def precision(self) -> str:
        """Compute precision as the service reports it (``fp32``, ``bf16``, ``mixed``); '' when the server decides."""
        ...

    @property
    def fused_track_step(self) -> bool:
        """Whether ``run(Stage.TRACK_STEP, ...)`` does a whole tracked frame in one call (Triton's ensemble)."""
        ...

    def run(self, stage: Stage, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run ``stage`` on ``inputs`` and return every output by name."""
        ...

    def is_ready(self) -> bool:
        """Whether the backend can serve now (a remote server is up and has the models); health follows it."""
        ...

    def close(self) -> None:
        """Release sessions, connections and memory."""
        ...


def batch_size(spec: GraphSpec, inputs: Mapping[str, np.ndarray]) -> int:
    """The batch of ``inputs``: axis 0 of the first input whose axis 0 is the batch."""
    return int(next(inputs[t.name].shape[0] for t in spec.inputs if t.shape[0] < 0))


def check_inputs(stage: Stage, inputs: Mapping[str, np.ndarray]) -> None:
    """Raise ``InvalidInput`` naming the first input that does not fit the contract (a stage graph's or an ensemble's).

    Every backend calls this first, so a bad tensor is the same domain error (INVALID_ARGUMENT) on all of them.
    """
    spec = GRAPHS[stage] if stage in GRAPHS else ENSEMBLES[stage]
    missing = [t.name for t in spec.inputs if t.name not in inputs]
    if missing:
        raise InvalidInput(f"{stage.value}: missing inputs {missing}")
    batch = None
    for t in spec.inputs:
        array = inputs[t.name]
        try:
            t.check(array)
        except ValueError as exc:
            raise InvalidInput(f"{stage.value}: {exc}") from None
        if t.shape[0] >= 0:  # not a batch axis (track_step's one image for all rows): its size is checked above
            continue
        if batch is None:
            batch = array.shape[0]
        elif array.shape[0] != batch:
            raise InvalidInput(f"{stage.value}: {t.name} has batch {array.shape[0]}, expected {batch}")
