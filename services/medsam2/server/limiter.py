"""The backend limiter: every backend call timed by stage, and at most ``max_concurrent`` in flight at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping

import numpy as np

from medsam2.engine.backend import StageBackend
from medsam2.graphs import Stage
from medsam2.server.metrics import BACKEND_SECONDS


class InstrumentedBackend:
    """A backend wrapper that times every call by stage and bounds how many run at once.

    On a CPU, calls from many sessions at once only fight over the same cores and
    caches; letting ``max_concurrent`` run at a time (1 for the embedded backend)
    keeps throughput at the single-session rate while sessions still interleave
    call by call, so no session waits for another's whole propagation.
    """

    def __init__(self, backend: StageBackend, max_concurrent: int = 0) -> None:
        self._backend = backend
        self.name = backend.name
        self.precision = backend.precision
        self.fused_track_step = backend.fused_track_step
        self._slots = threading.Semaphore(max_concurrent) if max_concurrent > 0 else None

    def run(self, stage: Stage, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run and time one stage."""
        if self._slots is not None:
            with self._slots:
                return self._timed(stage, inputs)
        return self._timed(stage, inputs)

    def _timed(self, stage: Stage, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        try:
            return self._backend.run(stage, inputs)
        finally:
            BACKEND_SECONDS.labels(backend=self.name, stage=stage.value).observe(time.perf_counter() - started)

    def is_ready(self) -> bool:
        """The wrapped backend's readiness."""
        return self._backend.is_ready()

    def close(self) -> None:
        """Close the wrapped backend."""
        self._backend.close()
