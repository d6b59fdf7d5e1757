"""Every Prometheus metric of the service, defined once. Labels never carry patient data."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from prometheus_client import Counter, Gauge, Histogram

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
