"""Open sessions: a registry with limits, idle and TTL clocks, LRU eviction and a per-session lock.

Lock order: the registry lock is held only for bookkeeping, never while a
session's lock is held or inference runs; work on a session holds its own lock.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from medsam2.engine.protocols import ObjectPrompt
from medsam2.engine.tracker import Tracker
from medsam2.errors import CapacityExceeded, NotFound
from medsam2.server import metrics
from medsam2.server.results import ResultStore
from medsam2.server.status import SessionBusy

if TYPE_CHECKING:
    from medsam2.server.versions import VersionedBackends

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Limits:
    """Capacity of the registry."""

    max_sessions: int = 16
    max_study_voxels: int = 512 * 512 * 1024
    max_state_bytes: int = 8 * 2**30
    idle_ttl_s: float = 1800.0
    lock_wait_s: float = 2.0


@dataclass(slots=True)
class StudyInfo:
    """What a session knows of its study besides the voxels."""

    spacing: tuple[float, float, float]
    label: str
    is_video: bool


@dataclass(slots=True)
class SessionEntry:
    """One open session."""

    session_id: str
    tracker: Tracker
    study: StudyInfo
    results: ResultStore
    prompts: dict[int, list[ObjectPrompt]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    last_used: float = field(default_factory=time.monotonic)
    busy: bool = False
    closed: bool = False
    model_version: int | None = None
    """The model repository version this session runs on, pinned at open until close (None: unversioned)."""

    @property
    def state_bytes(self) -> int:
        """Memory held by this session."""
        return self.tracker.state_bytes + self.results.nbytes

    def idle_seconds(self, now: float | None = None) -> float:
        """Seconds since the last request."""
        return (now or time.monotonic()) - self.last_used


class SessionRegistry:
    """Sessions by id, within ``Limits``."""

    def __init__(self, limits: Limits, clock: Callable[[], float] = time.monotonic, *,
                 versions: VersionedBackends | None = None) -> None:
        self.limits = limits
        self._clock = clock
        self._versions = versions
        self._sessions: dict[str, SessionEntry] = {}
        self._lock = threading.Lock()

    def check_study_size(self, voxels: int) -> None:
        """Refuse a study larger than the voxel limit before it is received."""
        if voxels > self.limits.max_study_voxels:
            raise CapacityExceeded(f"study has {voxels} voxels, the limit is {self.limits.max_study_voxels}")

    def add(self, tracker: Tracker, study: StudyInfo) -> SessionEntry:
        """Register a new session, evicting idle ones (least recently used first) to make room."""
        entry = SessionEntry(uuid.uuid4().hex, tracker, study, ResultStore(*tracker_shape(tracker)))
        entry.last_used = self._clock()
        with self._lock:
            self._make_room(entry.state_bytes)
            if self._versions is not None:
                # The tracker has not run yet: bind it to the current model version for its whole life
                # (pinned only once the session is admitted, so a refused session holds no version).
                entry.model_version, tracker.backend = self._versions.pin()
            self._sessions[entry.session_id] = entry
        self._publish()
        log.info("session %s opened (%d slices)", entry.session_id, tracker.num_frames)
        return entry

    def _make_room(self, incoming_bytes: int) -> None:
        def over() -> bool:
            used = sum(s.state_bytes for s in self._sessions.values())
            return len(self._sessions) >= self.limits.max_sessions or used + incoming_bytes > self.limits.max_state_bytes

        idle = sorted((s for s in self._sessions.values() if not s.busy and not s.lock.locked()),
                      key=lambda s: s.last_used)
        while over() and idle:
            victim = idle.pop(0)
            self._drop(victim, "lru")
        if over():
            raise CapacityExceeded(
                f"the service is full ({len(self._sessions)} sessions, limit {self.limits.max_sessions}; "
                f"state limit {self.limits.max_state_bytes} bytes) and no session is idle: retry later"
            )

    def get(self, session_id: str) -> SessionEntry:
        """The open session ``session_id``; refreshes its idle clock."""
        with self._lock:
            entry = self._sessions.get(session_id)
            if entry is None:
                raise NotFound(f"no session {session_id!r}: it was closed, expired, or never existed")
            entry.last_used = self._clock()
            return entry

    @contextmanager
    def claim(self, session_id: str, busy: bool = False) -> Iterator[SessionEntry]:
        """Hold a session's lock for one request (``busy`` marks a propagation)."""
        entry = self.get(session_id)
        if not entry.lock.acquire(timeout=self.limits.lock_wait_s):
            raise SessionBusy(f"session {session_id} is busy with another request (a propagation is running)")
        try:
            if entry.closed:
                raise NotFound(f"no session {session_id!r}: it was closed")
            entry.busy = busy
            metrics.BUSY_SESSIONS.set(sum(1 for s in self.list() if s.busy))
            yield entry
        finally:
            entry.busy = False
            entry.last_used = self._clock()
            entry.lock.release()
            metrics.BUSY_SESSIONS.set(sum(1 for s in self.list() if s.busy))
            self._publish()

    def close(self, session_id: str) -> bool:
        """Close a session; False if there was none."""
        with self._lock:
            entry = self._sessions.get(session_id)
            if entry is None:
                return False
            self._drop(entry, None)
        self._publish()
        return True

    def sweep(self) -> int:
        """Expire sessions idle longer than the TTL; returns how many."""
        now = self._clock()
        with self._lock:
            expired = [s for s in self._sessions.values()
                       if not s.busy and not s.lock.locked() and now - s.last_used > self.limits.idle_ttl_s]
            for entry in expired:
                self._drop(entry, "ttl")
        if expired:
            self._publish()
        return len(expired)

    def list(self) -> list[SessionEntry]:
        """Every open session."""
        with self._lock:
            return list(self._sessions.values())

    def close_all(self) -> None:
        """Close every session (shutdown)."""
        with self._lock:
            for entry in list(self._sessions.values()):
                self._drop(entry, None)
        self._publish()

    def _drop(self, entry: SessionEntry, reason: str | None) -> None:
        if self._versions is not None and not entry.closed:
            self._versions.release(entry.model_version)
        entry.closed = True
        self._sessions.pop(entry.session_id, None)
        entry.tracker.features.clear()
        if reason is not None:
            metrics.EVICTIONS.labels(reason=reason).inc()
            log.info("session %s evicted (%s)", entry.session_id, reason)

    def _publish(self) -> None:
        sessions = self.list()
        metrics.ACTIVE_SESSIONS.set(len(sessions))
        metrics.STATE_BYTES.set(sum(s.state_bytes for s in sessions))

    def expires_in(self, entry: SessionEntry) -> float:
        """Seconds until ``entry`` expires if left idle."""
        return max(0.0, self.limits.idle_ttl_s - entry.idle_seconds(self._clock()))


def tracker_shape(tracker: Tracker) -> tuple[int, int, int]:
    """[slices, rows, columns] of a tracker's study."""
    return tracker.num_frames, tracker.height, tracker.width


def study_voxels(shape: tuple[int, ...]) -> int:
    """Voxel count of a shape."""
    return int(np.prod(shape, dtype=np.int64))
