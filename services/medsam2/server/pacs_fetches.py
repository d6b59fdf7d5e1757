"""PACS fetches under their own guard: a cap in total and per principal, apart from uploads, and a fetch that
ends the moment its client leaves.

A slow PACS holds each fetch waiting on it for up to the endpoint's
``fetch_deadline_s``.  Were those fetches counted as uploads, one trickling
PACS would take every upload slot of every principal; here they take only PACS
slots, at most ``max_concurrent`` in all and ``per_principal`` for one caller
(the next one is refused at once with RESOURCE_EXHAUSTED and retry info).  A
client that cancels or disconnects cancels its fetch (the socket to the PACS
is shut down), so its slot is free again at once.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from medsam2.errors import CapacityExceeded, ClientCancelled
from medsam2.graphs import IMAGE_SIZE
from medsam2.pacs.http import CLIENT_LEFT, Cancel
from medsam2.pacs.transfer import FetchLimits
from medsam2.server import auth
from medsam2.server.config import FromSettings, from_setting

RETRY_FETCH_S = 5.0


@dataclass(frozen=True, slots=True)
class PacsFetchLimits(FromSettings):
    """How many PACS fetches run at once."""

    max_concurrent: int = from_setting("max_concurrent_pacs_fetches")
    max_per_principal: int = from_setting("max_pacs_fetches_per_principal")
    """Fetches of one principal at once (0: half the cap, at least 1)."""

    @property
    def per_principal(self) -> int:
        """Effective per-principal cap."""
        return self.max_per_principal or max(1, self.max_concurrent // 2)


def fetch_limits(max_study_voxels: int) -> FetchLimits:
    """What one fetch may take, from the service's study limit: every slice costs at least 512x512 voxels."""
    return FetchLimits(max_voxels=max_study_voxels, max_instances=max(1, max_study_voxels // (IMAGE_SIZE * IMAGE_SIZE)))


class PacsFetchGuard:
    """Admits PACS fetches and ties each one to its client's call."""

    def __init__(self, limits: PacsFetchLimits) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._running = 0  # guarded by _lock
        self._per_principal: dict[str, int] = {}  # guarded by _lock

    @property
    def running(self) -> int:
        """Fetches in flight now."""
        with self._lock:
            return self._running

    @contextmanager
    def fetch(self, context: Any | None) -> Iterator[Cancel]:
        """Take a PACS slot for the caller; the ``Cancel`` given fires when ``context``'s call ends."""
        principal = auth.current_principal() or auth.ANONYMOUS
        with self._lock:
            mine = self._per_principal.get(principal, 0)
            if mine >= self.limits.per_principal:
                raise CapacityExceeded(
                    f"you have {mine} PACS fetches in flight (the limit per principal): wait for one to finish",
                    reason="PACS_FETCHES_FULL",
                    retry_after_s=RETRY_FETCH_S,
                )
            if self._running >= max(1, self.limits.max_concurrent):
                raise CapacityExceeded(
                    f"{self._running} PACS fetches are already in flight (the limit): retry in a few seconds",
                    reason="PACS_FETCHES_FULL",
                    retry_after_s=RETRY_FETCH_S,
                )
            self._running += 1
            self._per_principal[principal] = mine + 1
        try:
            active = getattr(context, "is_active", None)
            cancel = Cancel(alive=active)
            if context is not None and hasattr(context, "add_callback"):
                # Called when the call ends for any reason; after the fetch it finds nothing left to stop.
                if not context.add_callback(lambda: cancel.cancel(CLIENT_LEFT)):
                    raise ClientCancelled("the client left before the PACS fetch began")
            yield cancel
        finally:
            with self._lock:
                self._running -= 1
                self._per_principal[principal] -= 1
                if not self._per_principal[principal]:
                    del self._per_principal[principal]
