"""Drain at shutdown: count the calls in flight, refuse new ones, and end streams at the grace period with a reason.

SIGTERM starts the clock (``begin``). From then on a new call is refused with UNAVAILABLE and the ``ErrorInfo``
reason ``SERVER_SHUTTING_DOWN`` (gRPC stops accepting by itself; a kept-alive HTTP connection could still send
one). Calls already running go on until the grace period ends; a propagation then ends at its next slice with
the same status (``check``), which clients retry on: with a shared session store another replica rebuilds the
session from its journal, and the unfinished propagation, never journaled, runs there again from the start.

The server closes sessions and the inference backend only once ``wait_idle`` says no call runs any more: an
ONNX Runtime session freed under a running call aborts the whole process.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

from medsam2.errors import ShuttingDown

DRAIN_END_S = 15.0
"""Default seconds, after the grace period, for calls to end (a stream at its next slice) before the server stops.
A slice takes about 0.5 s on a 2-core CPU at 512x512; this leaves room for a machine 5x slower under load."""
RETRY_AFTER_S = 1.0
"""Retry delay suggested to clients of a draining server (another replica, or this one restarted, answers)."""


class Drain:
    """The calls in flight and the shutdown clock of one server (shared by its gRPC and HTTP sides)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._changed = threading.Condition()
        self._calls = 0
        self._deadline: float | None = None

    @property
    def draining(self) -> bool:
        """Whether shutdown has begun."""
        return self._deadline is not None

    @property
    def calls(self) -> int:
        """Calls running now."""
        return self._calls

    def begin(self, grace_s: float) -> None:
        """Start draining: new calls are refused now, streams end ``grace_s`` seconds from now."""
        with self._changed:
            if self._deadline is None:
                self._deadline = self._clock() + max(grace_s, 0.0)
            self._changed.notify_all()

    @contextlib.contextmanager
    def call(self) -> Iterator[None]:
        """Count one call for as long as it runs; refused (``ShuttingDown``) once draining has begun."""
        with self._changed:
            if self._deadline is not None:
                raise _shutting_down("the server is shutting down and takes no new calls")
            self._calls += 1
        try:
            yield
        finally:
            with self._changed:
                self._calls -= 1
                self._changed.notify_all()

    def check(self) -> None:
        """Raise ``ShuttingDown`` once the grace period is over (a stream calls this before each message)."""
        deadline = self._deadline
        if deadline is not None and self._clock() >= deadline:
            raise _shutting_down("the server is shutting down and its grace period is over")

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no call runs (True), or ``timeout_s`` passed with some still running (False)."""
        end = time.monotonic() + max(timeout_s, 0.0)
        with self._changed:
            while self._calls:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
        return True


def _shutting_down(message: str) -> ShuttingDown:
    return ShuttingDown(
        f"{message}: retry (another replica, or this one once restarted, answers)", retry_after_s=RETRY_AFTER_S
    )
