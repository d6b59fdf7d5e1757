"""Open sessions: a registry with owners, per-principal quotas, idle and TTL clocks, eviction and a per-session lock.

Ownership: a session belongs to the principal that created it (the caller bound
by the ``@rpc`` decorator, see ``server/auth.py``). For anyone else it does not
exist: lookups answer NOT_FOUND with the same message as for an unknown id, and
``list`` shows only the caller's own sessions.

Eviction order when a new session needs room: first the caller's own idle
sessions (least recently used first), and only when the whole service is full
other principals' idle sessions. An evicted or expired session leaves a
tombstone, so its owner gets NOT_FOUND with the reason SESSION_EVICTED (or
SESSION_EXPIRED) instead of a silent "never existed".

Memory: state bytes are counted when a session is created and again after
every propagated slice (``account``). Over a cap, cached image features are
dropped first; after that the answer is RESOURCE_EXHAUSTED with retry info.
Closing or evicting frees a session's arrays at once (no reference cycles are
left for the garbage collector); a session in use is freed by the request
holding it as soon as it lets go, and a running Propagate stops within a slice.

Lock order: the registry lock is held only for bookkeeping, never while
waiting for a session's lock or while inference runs (it only ever *tries* a
session lock); work on a session holds its own lock, alone for a change
(``claim``), beside other readers for a download (``read``).
"""

from __future__ import annotations

import builtins
import logging
import math
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from medsam2.engine.postprocessing import PostProcessingOptions
from medsam2.engine.session import Session
from medsam2.engine.tracker import Tracker
from medsam2.errors import (
    CapacityExceeded,
    InvalidInput,
    SessionBusy,
    SessionClosed,
    SessionEvicted,
    SessionNotFound,
)
from medsam2.io.dicom_source import DicomSource
from medsam2.io.geometry import Geometry
from medsam2.server import auth, metrics
from medsam2.server.config import FromSettings, from_setting
from medsam2.server.results import ResultStore

if TYPE_CHECKING:
    from medsam2.server.versions import VersionedBackends

log = logging.getLogger(__name__)

RETRY_FULL_S = 10.0
"""Retry delay suggested when the service or a principal's quota is full."""


@dataclass(frozen=True, slots=True)
class Limits(FromSettings):
    """Capacity of the registry (0 for a per-principal limit means the service-wide one)."""

    max_sessions: int = from_setting("max_sessions")
    max_study_voxels: int = from_setting("max_study_voxels")
    max_state_bytes: int = from_setting("max_state_bytes")
    idle_ttl_s: float = from_setting("session_ttl_s")
    lock_wait_s: float = 2.0
    max_sessions_per_principal: int = from_setting("max_sessions_per_principal")
    max_state_bytes_per_principal: int = from_setting("max_state_bytes_per_principal")
    tombstones: int = 4096
    """How many removed session ids are remembered to tell owners why their session is gone."""

    @property
    def sessions_per_principal(self) -> int:
        """Effective per-principal session quota."""
        return self.max_sessions_per_principal or self.max_sessions

    @property
    def state_bytes_per_principal(self) -> int:
        """Effective per-principal state quota."""
        return self.max_state_bytes_per_principal or self.max_state_bytes


@dataclass(slots=True)
class StudyInfo:
    """What a session knows of its study besides the voxels."""

    spacing: tuple[float, float, float]
    label: str
    is_video: bool
    modality: str = ""
    geometry: Geometry | None = None
    """Patient-space geometry (LPS mm), when the study carried it."""
    frame_of_reference_uid: str = ""
    study_uid: str = ""
    series_uid: str = ""
    sop_instance_uids: tuple[str, ...] = ()
    """SOPInstanceUID of each slice, when known."""
    external_id: str = field(default="", repr=False)
    """The client's own id (e.g. an accession number): echoed back, never logged."""
    preset: str = ""
    """The intensity preset the study was prepared with, resolved ('auto' becomes a concrete one)."""
    dicom: DicomSource | None = field(default=None, repr=False)
    """Headers of the source objects (PACS studies): what a DICOM SEG references."""
    pacs_endpoint: str = ""
    """The PACS endpoint the study came from, if any."""
    postprocessing: PostProcessingOptions | None = None
    """The session's resolved post-processing (MedSAM2's defaults for its kind, overridden by the request)."""


class SessionLock:
    """A session's lock: one writer (prompts, propagation, resets) or any number of readers (results).

    ``acquire``/``release`` are the exclusive side, with ``threading.Lock``'s signature; ``locked`` is True
    while anyone holds it, so a session being read is in use (not evicted, not freed). A waiting writer
    holds new readers back, so a stream of downloads cannot starve a prompt.
    """

    __slots__ = ("_changed", "_readers", "_writer", "_writers_waiting")

    def __init__(self) -> None:
        self._changed = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Take the lock alone; False when it is held and ``blocking`` is off or ``timeout`` passed."""
        with self._changed:
            if not blocking:
                if self._writer or self._readers:
                    return False
                self._writer = True
                return True
            self._writers_waiting += 1
            try:
                free = self._changed.wait_for(
                    lambda: not self._writer and not self._readers, None if timeout < 0 else timeout
                )
            finally:
                self._writers_waiting -= 1
            if free:
                self._writer = True
            else:
                self._changed.notify_all()  # readers held back by this writer may go on
            return free

    def release(self) -> None:
        """Let go of the exclusive lock."""
        with self._changed:
            self._writer = False
            self._changed.notify_all()

    def acquire_shared(self, timeout: float) -> bool:
        """Take the lock beside other readers; False when a writer held or awaited it for ``timeout`` seconds."""
        with self._changed:
            free = self._changed.wait_for(lambda: not self._writer and not self._writers_waiting, timeout)
            if free:
                self._readers += 1
            return free

    def release_shared(self) -> None:
        """Let go of a shared hold."""
        with self._changed:
            self._readers -= 1
            self._changed.notify_all()

    def locked(self) -> bool:
        """Whether anyone holds the lock."""
        return self._writer or self._readers > 0


@dataclass(slots=True)
class SessionEntry:
    """One open session."""

    session_id: str
    session: Session
    """The study's prompts, tracks and masks (``engine.session``)."""
    study: StudyInfo
    results: ResultStore
    objects: dict[int, Any] = field(default_factory=dict)
    """Per-object DICOM metadata (label, colour, codes) that AddPrompt set."""
    durable: bool = False
    """Whether the session store holds this session (its study and journal), so any replica can rebuild it."""
    replies: dict[str, Any] = field(default_factory=dict)
    """Replies by client request id, so a retried AddPrompt or StoreResult repeats nothing."""
    owner: str = auth.ANONYMOUS
    lock: SessionLock = field(default_factory=lambda: SessionLock())
    last_used: float = field(default_factory=time.monotonic)
    busy: bool = False
    closed: bool = False
    freed: bool = False
    holder: str = ""
    """The RPC holding the session's lock (for the ABORTED message), '' when free."""
    held_since: float = 0.0
    model_version: int | None = None
    """The model repository version this session runs on, pinned at open until close (None: unversioned)."""
    image: np.ndarray | None = field(default=None, repr=False)
    """The study's voxels as loaded (before windowing), kept for GetImage when the client asked; never modified."""
    image_file_bytes: int = 0
    """Size of the image's NIfTI file as GetImage sends it (0: not counted yet); the image never changes."""
    image_lock: threading.Lock = field(default_factory=threading.Lock)
    """Held while the first GetImage counts the file's size, so concurrent first calls count it once."""
    rebuilder: int = 0
    """The thread replaying this session's journal (0: none); no other request sees the session until it is done."""

    @property
    def tracker(self) -> Tracker:
        """The session's tracker."""
        return self.session.tracker

    @property
    def annotation(self) -> Any:
        """The volume protocol's state (``engine.protocols.VolumeAnnotation``); None for videos."""
        return self.session.annotation

    @annotation.setter
    def annotation(self, value: Any) -> None:
        self.session.annotation = value

    def checkpoint(self) -> Checkpoint:
        """The session's state now (prompts, tracks, masks, object metadata); ``restore`` puts it back."""
        annotation = self.annotation
        return Checkpoint(
            self,
            annotation,
            annotation.snapshot() if annotation is not None else None,
            self.tracker.snapshot(),
            self.results.snapshot(),
            dict(self.objects),
        )

    @contextmanager
    def all_or_nothing(self) -> Iterator[None]:
        """Run a change that is kept only if all of it succeeds, its journal write included (TGI's pop-compute-put)."""
        before = self.checkpoint()
        try:
            yield
        except BaseException:
            before.restore()
            raise

    def visible(self) -> bool:
        """Whether the calling thread may use this session (not while another thread is still rebuilding it)."""
        return self.rebuilder in (0, threading.get_ident())

    @property
    def state_bytes(self) -> int:
        """Memory held by this session."""
        if self.freed:
            return 0
        annotation = self.annotation.state_bytes if self.annotation is not None else 0
        image = self.image.nbytes if self.image is not None else 0
        return self.tracker.state_bytes + self.results.nbytes + annotation + image

    def idle_seconds(self, now: float | None = None) -> float:
        """Seconds since the last request."""
        return (now or time.monotonic()) - self.last_used


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A session's state at one moment: what a change that failed (e.g. its journal write) restores."""

    entry: SessionEntry
    annotation: Any
    annotation_state: Any
    tracks: dict
    masks: dict[int, np.ndarray]
    objects: dict[int, Any]

    def restore(self) -> None:
        """Put the session back as it was when the checkpoint was taken."""
        entry = self.entry
        if entry.freed:
            return  # closed meanwhile: nothing left to restore
        entry.annotation = self.annotation
        if self.annotation is not None:
            self.annotation.restore(self.annotation_state)
        entry.tracker.restore(self.tracks)
        entry.results.restore(self.masks)
        entry.objects = dict(self.objects)


@dataclass(frozen=True, slots=True)
class _Tombstone:
    owner: str
    reason: str  # "closed", "evicted", "expired"
    idle_s: float


class SessionRegistry:
    """Sessions by id, within ``Limits``, each visible to its owner only."""

    def __init__(
        self, limits: Limits, clock: Callable[[], float] = time.monotonic, *, versions: VersionedBackends | None = None
    ) -> None:
        self.limits = limits
        self._clock = clock
        self._versions = versions
        self._sessions: dict[str, SessionEntry] = {}
        self._tombstones: OrderedDict[str, _Tombstone] = OrderedDict()
        self._lock = threading.Lock()
        self.rebuild: Callable[[str, str], bool] | None = None
        """Called as ``rebuild(session_id, owner)`` when a lookup finds no session here and no local close says it
        is gone; True when it opened the session again (from the durable session store)."""

    @property
    def versions(self) -> VersionedBackends | None:
        """The served model versions, when the repository has numbered ones."""
        return self._versions

    # -- admission ------------------------------------------------------------------------
    def check_study_size(self, voxels: int) -> None:
        """Refuse a study larger than the voxel limit before it is received."""
        if voxels > self.limits.max_study_voxels:
            raise CapacityExceeded(
                f"study has {voxels} voxels, the limit is {self.limits.max_study_voxels}", reason="STUDY_TOO_LARGE"
            )

    def admit(self, incoming_bytes: int, *, principal: str | None = None) -> None:
        """Refuse, before anything is allocated, a session of ``incoming_bytes`` that could never fit."""
        owner = _who(principal)
        with self._lock:
            own = [s for s in self._sessions.values() if s.owner == owner]
            pinned_own = [s for s in own if _in_use(s)]
            pinned_all = [s for s in self._sessions.values() if _in_use(s)]
        if incoming_bytes > self.limits.state_bytes_per_principal or incoming_bytes > self.limits.max_state_bytes:
            raise CapacityExceeded(
                f"the study needs about {incoming_bytes} bytes of session state; the limit is "
                f"{min(self.limits.state_bytes_per_principal, self.limits.max_state_bytes)} bytes",
                reason="STUDY_TOO_LARGE",
            )
        if (
            len(pinned_own) >= self.limits.sessions_per_principal
            or sum(s.state_bytes for s in pinned_own) + incoming_bytes > self.limits.state_bytes_per_principal
        ):
            raise CapacityExceeded(self._own_full_message(own), reason="PRINCIPAL_QUOTA", retry_after_s=RETRY_FULL_S)
        if (
            len(pinned_all) >= self.limits.max_sessions
            or sum(s.state_bytes for s in pinned_all) + incoming_bytes > self.limits.max_state_bytes
        ):
            raise CapacityExceeded(self._full_message(), reason="SERVICE_FULL", retry_after_s=RETRY_FULL_S)

    def add(
        self,
        session: Session,
        study: StudyInfo,
        *,
        principal: str | None = None,
        session_id: str | None = None,
        model_version: int | None = None,
        image: np.ndarray | None = None,
    ) -> SessionEntry:
        """Register a new session of the caller (``session_id``: a rebuilt one), evicting idle ones to make room.

        A rebuilt session stays hidden from other threads until ``rebuilt`` says its journal is replayed.
        ``model_version``: the version a rebuilt session was opened with (held by ``VersionedBackends.hold``);
        otherwise the current one. ``image`` keeps the study's voxels for GetImage.
        """
        tracker = session.tracker
        entry = SessionEntry(
            session_id or uuid.uuid4().hex,
            session,
            study,
            ResultStore(*tracker_shape(tracker)),
            owner=_who(principal),
            image=image,
        )
        if session_id is not None:
            entry.rebuilder = threading.get_ident()
        entry.last_used = self._clock()
        evicted: builtins.list[SessionEntry] = []
        try:
            with self._lock:
                self._make_room(entry.owner, entry.state_bytes, evicted)
                self._tombstones.pop(entry.session_id, None)  # a rebuilt session is open again
                if self._versions is not None:
                    # The tracker has not run yet: bind it to the current model version for its whole life
                    # (pinned only once the session is admitted, so a refused session holds no version).
                    entry.model_version, tracker.backend = self._versions.pin(model_version)
                self._sessions[entry.session_id] = entry
        except CapacityExceeded:
            _free(entry)
            raise
        finally:
            for victim in evicted:
                self._free_when_unused(victim)
        self._publish()
        log.info("session %s opened (%d slices)", entry.session_id, tracker.num_frames)
        return entry

    def _make_room(self, owner: str, incoming_bytes: int, evicted: builtins.list[SessionEntry]) -> None:
        limits = self.limits

        def own_over() -> bool:
            own = [s for s in self._sessions.values() if s.owner == owner]
            return (
                len(own) >= limits.sessions_per_principal
                or sum(s.state_bytes for s in own) + incoming_bytes > limits.state_bytes_per_principal
            )

        def service_over() -> bool:
            used = sum(s.state_bytes for s in self._sessions.values())
            return len(self._sessions) >= limits.max_sessions or used + incoming_bytes > limits.max_state_bytes

        idle = sorted((s for s in self._sessions.values() if not _in_use(s)), key=lambda s: s.last_used)
        idle_own = [s for s in idle if s.owner == owner]
        idle_others = [s for s in idle if s.owner != owner]
        while own_over() and idle_own:
            evicted.append(self._drop(idle_own.pop(0), "evicted"))
        if own_over():
            raise CapacityExceeded(
                self._own_full_message([s for s in self._sessions.values() if s.owner == owner]),
                reason="PRINCIPAL_QUOTA",
                retry_after_s=RETRY_FULL_S,
            )
        for pool in (idle_own, idle_others):
            while service_over() and pool:
                evicted.append(self._drop(pool.pop(0), "evicted"))
        if service_over():
            raise CapacityExceeded(self._full_message(), reason="SERVICE_FULL", retry_after_s=RETRY_FULL_S)

    def _own_full_message(self, own: builtins.list[SessionEntry]) -> str:
        return (
            f"you have {len(own)} open sessions holding {sum(s.state_bytes for s in own)} bytes (your limits: "
            f"{self.limits.sessions_per_principal} sessions, {self.limits.state_bytes_per_principal} bytes) "
            f"and none is idle: close one or retry later"
        )

    def _full_message(self) -> str:
        return (
            f"the service is full ({len(self._sessions)} sessions, limit {self.limits.max_sessions}; "
            f"state limit {self.limits.max_state_bytes} bytes) and no session is idle: retry later"
        )

    # -- lookups --------------------------------------------------------------------------
    def get(self, session_id: str, *, principal: str | None = None) -> SessionEntry:
        """The caller's open session ``session_id`` (rebuilt from the store if another replica held it)."""
        owner = _who(principal)
        for attempt in range(2):
            with self._lock:
                entry = self._sessions.get(session_id)
                if entry is not None and entry.owner == owner and entry.visible():
                    entry.last_used = self._clock()
                    return entry
                # Being rebuilt by another request: wait for that rebuild (``rebuild`` serialises them) and look again.
                being_rebuilt = entry is not None and entry.owner == owner
                missing = self._missing(session_id, owner)
                tomb = self._tombstones.get(session_id)
            closed_here = tomb is not None and tomb.reason == "closed"
            found_other = entry is not None and not being_rebuilt
            if attempt or found_other or closed_here or not session_id or self.rebuild is None:
                raise missing
            if not self.rebuild(session_id, owner):
                raise missing
        raise AssertionError("unreachable")  # pragma: no cover

    def _missing(self, session_id: str, owner: str) -> SessionNotFound:
        if not session_id:
            return SessionNotFound("session_id is empty: give the id CreateSession returned", field="session_id")
        tomb = self._tombstones.get(session_id)
        if tomb is None or tomb.owner != owner:
            return SessionNotFound(
                f"no session {session_id!r}: it was closed, expired, or never existed", field="session_id"
            )
        if tomb.reason == "closed":
            return SessionClosed(f"session {session_id!r} was closed", field="session_id")
        if tomb.reason == "expired":
            return SessionEvicted(
                f"session {session_id!r} expired after {tomb.idle_s:.0f} s idle (the TTL is "
                f"{self.limits.idle_ttl_s:.0f} s): open it again",
                field="session_id",
                reason="SESSION_EXPIRED",
            )
        return SessionEvicted(
            f"session {session_id!r} was evicted after {tomb.idle_s:.0f} s idle to make room for "
            f"a new session (the service or your quota was full): open it again",
            field="session_id",
        )

    def _busy(self, entry: SessionEntry, session_id: str) -> SessionBusy:
        """The refusal of a request that waited too long for ``entry``'s lock, naming what holds it."""
        holder = entry.holder or "another request"
        held = self._clock() - entry.held_since if entry.held_since else 0.0
        return SessionBusy(
            f"session {session_id} is busy: {holder} has held it for {held:.1f} s "
            f"(waited {self.limits.lock_wait_s:g} s); retry when it ends, or cancel it",
            field="session_id",
        )

    @contextmanager
    def claim(self, session_id: str, busy: bool = False, *, principal: str | None = None) -> Iterator[SessionEntry]:
        """Hold a session's lock for one request (``busy`` marks a propagation)."""
        entry = self.get(session_id, principal=principal)
        if not entry.lock.acquire(timeout=self.limits.lock_wait_s):
            raise self._busy(entry, session_id)
        try:
            if entry.closed:
                raise self._missing(session_id, entry.owner)
            entry.busy = busy
            entry.holder = auth.current_rpc() or "another request"
            entry.held_since = self._clock()
            metrics.BUSY_SESSIONS.set(sum(1 for s in self._all() if s.busy))
            yield entry
        finally:
            if not entry.closed and self._over(entry.owner):
                entry.tracker.features.clear()  # a prompt can grow the state too: the cache goes first
            entry.busy = False
            entry.holder = ""
            entry.held_since = 0.0
            entry.last_used = self._clock()
            entry.lock.release()
            if entry.closed:  # closed while we held it: we free it (see _free_when_unused)
                self._free_when_unused(entry)
            metrics.BUSY_SESSIONS.set(sum(1 for s in self._all() if s.busy))
            self._publish()

    @contextmanager
    def read(self, session_id: str, *, principal: str | None = None) -> Iterator[SessionEntry]:
        """Hold a session for reading (GetResult): beside other readers, never beside a prompt or a propagation."""
        entry = self.get(session_id, principal=principal)
        if not entry.lock.acquire_shared(timeout=self.limits.lock_wait_s):
            raise self._busy(entry, session_id)
        try:
            if entry.closed:
                raise self._missing(session_id, entry.owner)
            yield entry
        finally:
            entry.last_used = self._clock()
            entry.lock.release_shared()
            if entry.closed:  # closed while read: the last to let go frees it
                self._free_when_unused(entry)

    def list(self, *, principal: str | None = None) -> builtins.list[SessionEntry]:
        """The caller's open sessions."""
        owner = _who(principal)
        with self._lock:
            return [s for s in self._sessions.values() if s.owner == owner and s.visible()]

    def _all(self) -> builtins.list[SessionEntry]:
        with self._lock:
            return list(self._sessions.values())

    # -- growth ---------------------------------------------------------------------------
    def account(self, entry: SessionEntry) -> None:
        """Check a growing session against the caps (after each slice): shed cached features, then refuse.

        Also the point where a running Propagate notices that its session was closed.
        """
        if entry.closed:
            raise self._missing(entry.session_id, entry.owner)
        if not self._over(entry.owner):
            return
        # Cached image features are a cache: this session's first, then other idle sessions'.
        entry.tracker.features.clear()
        for other in self._all():
            if other is not entry and not other.closed and other.lock.acquire(blocking=False):
                try:
                    other.tracker.features.clear()
                finally:
                    other.lock.release()
            if not self._over(entry.owner):
                break
        self._publish()
        if self._over(entry.owner):
            raise CapacityExceeded(
                f"session {entry.session_id} grew to {entry.state_bytes} bytes and the state limit "
                f"({self.limits.max_state_bytes} bytes, {self.limits.state_bytes_per_principal} per principal) "
                f"is reached even without cached features: close sessions or propagate a smaller range",
                reason="STATE_LIMIT",
                retry_after_s=RETRY_FULL_S,
            )

    def _over(self, owner: str) -> bool:
        sessions = self._all()
        total = sum(s.state_bytes for s in sessions)
        own = sum(s.state_bytes for s in sessions if s.owner == owner)
        return total > self.limits.max_state_bytes or own > self.limits.state_bytes_per_principal

    def rebuilt(self, session_id: str) -> None:
        """A rebuilt session's journal is replayed: every request may use it now."""
        with self._lock:
            entry = self._sessions.get(session_id)
            if entry is not None:
                entry.rebuilder = 0

    # -- removal --------------------------------------------------------------------------
    def discard(self, session_id: str) -> None:
        """Forget a half-built session (a failed rebuild) without a tombstone, so the next call rebuilds it."""
        with self._lock:
            entry = self._sessions.pop(session_id, None)
            if entry is not None:
                entry.closed = True
                if self._versions is not None:
                    self._versions.release(entry.model_version)
        if entry is not None:
            self._free_when_unused(entry)
            self._publish()

    def close(self, session_id: str, *, principal: str | None = None) -> bool:
        """Close one of the caller's sessions; False if there was none. Frees it now, or when its holder lets go."""
        owner = _who(principal)
        with self._lock:
            entry = self._sessions.get(session_id)
            if entry is None or entry.owner != owner:
                return False
            self._drop(entry, "closed")
        self._free_when_unused(entry)
        self._publish()
        return True

    def sweep(self) -> int:
        """Expire sessions idle longer than the TTL; returns how many."""
        now = self._clock()
        with self._lock:
            expired = [
                self._drop(s, "expired")
                for s in list(self._sessions.values())
                if not _in_use(s) and now - s.last_used > self.limits.idle_ttl_s
            ]
        for entry in expired:
            self._free_when_unused(entry)
        if expired:
            self._publish()
        return len(expired)

    def close_all(self) -> None:
        """Close every session (shutdown)."""
        with self._lock:
            dropped = [self._drop(entry, "closed") for entry in list(self._sessions.values())]
        for entry in dropped:
            self._free_when_unused(entry)
        self._publish()

    def _drop(self, entry: SessionEntry, reason: str) -> SessionEntry:
        """Unlist ``entry`` and leave a tombstone (registry lock held); the caller frees it after unlocking."""
        if self._versions is not None and not entry.closed:
            self._versions.release(entry.model_version)
        entry.closed = True
        self._sessions.pop(entry.session_id, None)
        self._tombstones[entry.session_id] = _Tombstone(entry.owner, reason, entry.idle_seconds(self._clock()))
        while len(self._tombstones) > self.limits.tombstones:
            self._tombstones.popitem(last=False)
        if reason != "closed":
            metrics.EVICTIONS.labels(reason="ttl" if reason == "expired" else "lru").inc()
            log.info("session %s %s", entry.session_id, reason)
        return entry

    def _free_when_unused(self, entry: SessionEntry) -> None:
        # Whoever gets the lock after ``closed`` is set frees; a holder re-checks after releasing (see claim).
        if entry.lock.acquire(blocking=False):
            try:
                _free(entry)
            finally:
                entry.lock.release()

    def _publish(self) -> None:
        sessions = self._all()
        metrics.ACTIVE_SESSIONS.set(len(sessions))
        metrics.STATE_BYTES.set(sum(s.state_bytes for s in sessions))

    def expires_in(self, entry: SessionEntry) -> float:
        """Seconds until ``entry`` expires if left idle."""
        return max(0.0, self.limits.idle_ttl_s - entry.idle_seconds(self._clock()))


def _free(entry: SessionEntry) -> None:
    """Release a closed session's arrays now (idempotent)."""
    if entry.freed:
        return
    entry.freed = True
    entry.tracker.close()
    entry.results.clear()
    # The annotation holds the tracker and per-object masks: drop the reference so nothing outlives the close.
    entry.annotation = None
    entry.objects.clear()
    entry.replies.clear()
    entry.image = None


def _in_use(entry: SessionEntry) -> bool:
    return entry.busy or entry.lock.locked()


def _who(principal: str | None) -> str:
    if principal is not None:
        return principal
    return auth.current_principal() or auth.ANONYMOUS


def tracker_shape(tracker: Tracker) -> tuple[int, int, int]:
    """[slices, rows, columns] of a tracker's study."""
    return tracker.num_frames, tracker.height, tracker.width


def study_voxels(shape: tuple[int, ...]) -> int:
    """Voxel count of a shape, in Python integers (a product that overflows int64 stays exact)."""
    if any(int(v) < 0 for v in shape):
        raise InvalidInput(f"shape {list(shape)} has a negative axis", field="header.shape")
    return math.prod(int(v) for v in shape)
