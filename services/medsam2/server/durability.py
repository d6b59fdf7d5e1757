"""Durable sessions: journal what was acknowledged to the session store, and rebuild sessions this replica lacks.

A session is its study reference plus an ordered journal of the requests that changed it (AddPrompt, Propagate,
ResetObjects). The engine is deterministic, so any replica that opens the same study and replays the same
requests holds the same state and computes bit-identical results. An uploaded study is kept in the store
compressed (zlib, in chunks) up to a cap; a PACS study keeps only its reference. Past the cap a session is not
durable: it lives in its replica's memory only, and GetSession says so.

Writes are journaled after the engine accepted them and before the reply: a request that was answered OK is in
the store, and the servicer keeps a change only once its entry is stored (a failed write puts the session back
as it was, ``SessionEntry.all_or_nothing``), so a retry applies it once. A Propagate is journaled when its
stream ran to the end (a cancelled one, or one cut by a draining server, changed nothing that a rebuild needs:
the annotation keeps an object's new state only once its pass finishes).
"""

from __future__ import annotations

import contextlib
import threading
import time
import zlib
from collections.abc import Iterator

import numpy as np
from google.protobuf.message import Message

from medsam2.api.convert import header_dtype, header_shape
from medsam2.api.pb.medsam2.v1 import segmentation_pb2 as pb
from medsam2.store import JournalEntry, SessionRecord, SessionStore

STUDY_CHUNK_BYTES = 1 << 20
"""Size of one stored chunk of a compressed upload (a Redis value stays small)."""
JOURNALED: dict[str, type[Message]] = {
    "AddPrompt": pb.AddPromptRequest,
    "Propagate": pb.PropagateRequest,
    "ResetObjects": pb.ResetObjectsRequest,
}
"""The requests that change a session, by RPC name, in the order they are replayed."""


class Durability:
    """Writes sessions' records and journals to a ``SessionStore`` and reads them back for rebuilds."""

    def __init__(self, store: SessionStore, *, ttl_s: float, max_study_bytes: int) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.max_study_bytes = max_study_bytes
        self._replaying = threading.local()
        self._rebuild_locks: dict[str, tuple[threading.Lock, int]] = {}
        """Per session id: the lock its rebuilds take turns on, and how many requests hold or await it."""
        self._locks_lock = threading.Lock()

    # -- writing ---------------------------------------------------------------------------------
    def pack_study(self, header: pb.StudyHeader, voxels: np.ndarray | None) -> list[bytes] | None:
        """The stored form of a study: [] for a PACS reference, compressed chunks of an upload, None past the cap."""
        if header.HasField("pacs") or voxels is None:
            return []
        data = zlib.compress(np.ascontiguousarray(voxels).tobytes(), 1)
        if len(data) > self.max_study_bytes:
            return None
        return [data[i : i + STUDY_CHUNK_BYTES] for i in range(0, len(data), STUDY_CHUNK_BYTES)]

    def created(
        self, session_id: str, owner: str, header: pb.StudyHeader, chunks: list[bytes], model_version: int | None
    ) -> None:
        """Store a new session's record and study (nothing while replaying: the record is already there)."""
        if self.replaying:
            return
        record = SessionRecord(
            session_id=session_id,
            owner=owner,
            header=header.SerializeToString(),
            model_version=model_version,
            created=time.time(),
        )
        self.store.create(record, chunks, self.ttl_s)

    def journal(self, session_id: str, method: str, request: Message) -> None:
        """Append one acknowledged change (nothing while replaying it)."""
        if not self.replaying:
            self.store.append(session_id, JournalEntry(method, request.SerializeToString()), self.ttl_s)

    def remember_reply(self, session_id: str, key: str, reply: Message, digest: bytes) -> None:
        """Keep the reply to a request with side effects outside the session (a PACS store, a saved file).

        ``digest`` is the request's (``idempotency.request_digest``), so a reused id is told from a retry.
        """
        self.store.remember_reply(session_id, key, _with_digest(digest, reply.SerializeToString()), self.ttl_s)

    def reply(self, session_id: str, key: str, reply_type: type[Message]) -> tuple[bytes, Message] | None:
        """The request digest and reply kept for ``key``, if any (so a retry on another replica repeats nothing)."""
        data = self.store.reply(session_id, key)
        if data is None:
            return None
        digest, body = _split_digest(data)
        return digest, reply_type.FromString(body)

    def created_for(self, owner: str, request_id: str) -> tuple[bytes, str] | None:
        """The request digest and session of a CreateSession with ``request_id`` by ``owner`` on any replica."""
        data = self.store.reply(_create_request(owner, request_id), "session_id")
        if data is None:
            return None
        digest, body = _split_digest(data)
        return digest, body.decode()

    def remember_created(self, owner: str, request_id: str, session_id: str, digest: bytes) -> None:
        """Record which session a CreateSession request opened, so its retry on another replica finds it."""
        data = _with_digest(digest, session_id.encode())
        self.store.remember_reply(_create_request(owner, request_id), "session_id", data, self.ttl_s)

    def closed(self, session_id: str) -> None:
        """Forget a closed session everywhere."""
        self.store.delete(session_id)

    # -- reading ---------------------------------------------------------------------------------
    def history(self, session_id: str) -> list[str]:
        """One line per journaled change, oldest first, for GetSession."""
        lines = []
        for entry in self.store.journal(session_id):
            request = JOURNALED[entry.method].FromString(entry.request)
            lines.append(describe(entry.method, request))
        return lines

    def study_voxels(self, session_id: str, header: pb.StudyHeader) -> np.ndarray:
        """The uploaded voxels of a stored session, as the header describes them."""
        data = zlib.decompress(self.store.study(session_id))
        return np.frombuffer(data, header_dtype(header)).reshape(header_shape(header))

    @property
    def replaying(self) -> bool:
        """Whether this thread is replaying a journal (its requests are not journaled again)."""
        return bool(getattr(self._replaying, "active", False))

    @contextlib.contextmanager
    def rebuilding(self, session_id: str) -> Iterator[None]:
        """One rebuild of ``session_id`` at a time in this replica; this thread's requests are replays meanwhile."""
        with self._locks_lock:
            lock, users = self._rebuild_locks.get(session_id, (threading.Lock(), 0))
            self._rebuild_locks[session_id] = (lock, users + 1)
        try:
            with lock:
                self._replaying.active = True
                try:
                    yield
                finally:
                    self._replaying.active = False
        finally:
            # The lock is forgotten only when no other request waits on it: a waiter must find the rebuilt
            # session, not a fresh lock that lets a second rebuild run beside the first.
            with self._locks_lock:
                lock, users = self._rebuild_locks[session_id]
                if users == 1:
                    del self._rebuild_locks[session_id]
                else:
                    self._rebuild_locks[session_id] = (lock, users - 1)


def _with_digest(digest: bytes, body: bytes) -> bytes:
    # One length byte, the digest, then the reply: a stored reply says which request it answered.
    return bytes([len(digest)]) + digest + body


def _split_digest(data: bytes) -> tuple[bytes, bytes]:
    size = data[0] if data else 0
    return data[1 : 1 + size], data[1 + size :]


def _create_request(owner: str, request_id: str) -> str:
    # The store keeps replies per session; each CreateSession request gets a session-like key of its own, which
    # expires with the session's TTL (one key per request, so a busy principal grows no ever-larger record).
    return f"create-request/{owner}/{request_id}"


def describe(method: str, request: Message) -> str:
    """A one-line summary of a journaled request (no labels or UIDs: it may be logged)."""
    if isinstance(request, pb.AddPromptRequest):
        kind = "box" if request.HasField("box") else "mask" if request.HasField("mask") else "clicks"
        extra = " correction" if request.correction else ""
        return f"AddPrompt object {request.object_id} slice {request.slice} {kind}{extra}"
    if isinstance(request, pb.PropagateRequest):
        span = ""
        if request.HasField("first_slice") or request.HasField("last_slice"):
            span = f" slices {request.first_slice if request.HasField('first_slice') else 0}.."
            span += str(request.last_slice) if request.HasField("last_slice") else "end"
        return f"Propagate{span}"
    if isinstance(request, pb.ResetObjectsRequest):
        return "ResetObjects all" if request.all else f"ResetObjects {list(request.object_ids)}"
    return method
