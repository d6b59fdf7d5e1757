"""Every Prometheus metric of the service, defined once. Labels never carry patient data."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from prometheus_client import Counter, Gauge, Histogram

from medsam2.engine.backend import StageBackend
from medsam2.graphs import Stage

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

RPC_REQUESTS = Counter("medsam2_rpc_requests_total", "gRPC requests handled", ["method", "code"])
RPC_SECONDS = Histogram(
    "medsam2_rpc_duration_seconds",
    "gRPC request duration (streams: until the last message)",
    ["method", "code"],
    buckets=_LATENCY_BUCKETS,
)
SLICE_SECONDS = Histogram(
    "medsam2_slice_duration_seconds", "Time to produce one propagated slice", ["backend"], buckets=_LATENCY_BUCKETS
)
SLICES = Counter("medsam2_propagated_slices_total", "Slices streamed by Propagate", ["backend"])
BACKEND_SECONDS = Histogram(
    "medsam2_backend_call_duration_seconds",
    "Duration of one backend call",
    ["backend", "stage"],
    buckets=_LATENCY_BUCKETS,
)
BACKEND_READY = Gauge("medsam2_backend_ready", "1 when the inference backend is ready", ["backend"])
ACTIVE_SESSIONS = Gauge("medsam2_active_sessions", "Open sessions")
BUSY_SESSIONS = Gauge("medsam2_busy_sessions", "Sessions with a propagation in flight")
STATE_BYTES = Gauge("medsam2_session_state_bytes", "Memory held by all sessions")
EVICTIONS = Counter("medsam2_session_evictions_total", "Sessions removed without a CloseSession", ["reason"])
REBUILDS = Counter("medsam2_session_rebuilds_total", "Sessions rebuilt from the session store by this replica")
REBUILD_SECONDS = Histogram(
    "medsam2_session_rebuild_seconds",
    "Time to rebuild a session: fetch the study and replay its journal",
    buckets=_LATENCY_BUCKETS,
)
ERRORS = Counter("medsam2_errors_total", "Requests that ended in an error, by error type", ["kind"])


@dataclass
class _Outcome:
    code: str = "OK"


@contextmanager
def rpc_timer(method: str) -> Iterator[_Outcome]:
    """Count and time one RPC; the caller sets the outcome's code."""
    outcome = _Outcome()
    started = time.perf_counter()
    try:
        yield outcome
    finally:
        RPC_REQUESTS.labels(method=method, code=outcome.code).inc()
        RPC_SECONDS.labels(method=method, code=outcome.code).observe(time.perf_counter() - started)


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
