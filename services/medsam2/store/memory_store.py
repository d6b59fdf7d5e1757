"""The default ``memory://`` store: records in this process only, so a lost replica loses its sessions."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import replace

from medsam2.store.base import JournalEntry, SessionRecord


class MemoryStore:
    """Dict-backed ``SessionStore`` with expiry on read; what the service did before durable sessions."""

    url_scheme = "memory"

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._records: dict[str, SessionRecord] = {}
        self._studies: dict[str, bytes] = {}
        self._journals: dict[str, list[JournalEntry]] = {}
        self._replies: dict[tuple[str, str], bytes] = {}
        self._expires: dict[str, float] = {}

    def _alive(self, session_id: str) -> bool:
        deadline = self._expires.get(session_id)
        if deadline is not None and deadline <= self._clock():
            self._forget(session_id)
            return False
        return session_id in self._records

    def _forget(self, session_id: str) -> None:
        self._records.pop(session_id, None)
        self._studies.pop(session_id, None)
        self._journals.pop(session_id, None)
        self._expires.pop(session_id, None)
        for key in [k for k in self._replies if k[0] == session_id]:
            del self._replies[key]

    def ping(self) -> None:
        """Always there."""

    def create(self, record: SessionRecord, study_chunks: Iterable[bytes], ttl_s: float) -> None:
        """Store the record and the study's bytes."""
        data = b"".join(study_chunks)
        with self._lock:
            self._records[record.session_id] = replace(record)
            self._studies[record.session_id] = data
            self._journals[record.session_id] = []
            self._expires[record.session_id] = self._clock() + ttl_s

    def load(self, session_id: str) -> SessionRecord | None:
        """The record, or None."""
        with self._lock:
            return replace(self._records[session_id]) if self._alive(session_id) else None

    def study(self, session_id: str) -> bytes:
        """The stored study bytes (empty for a PACS reference)."""
        with self._lock:
            return self._studies.get(session_id, b"")

    def append(self, session_id: str, entry: JournalEntry, ttl_s: float) -> int:
        """Append and refresh the TTL."""
        with self._lock:
            journal = self._journals.setdefault(session_id, [])
            journal.append(entry)
            self._expires[session_id] = self._clock() + ttl_s
            return len(journal)

    def journal(self, session_id: str) -> list[JournalEntry]:
        """Every entry, oldest first."""
        with self._lock:
            return list(self._journals.get(session_id, []))

    def touch(self, session_id: str, ttl_s: float) -> None:
        """Refresh the TTL of a live session."""
        with self._lock:
            if self._alive(session_id):
                self._expires[session_id] = self._clock() + ttl_s

    def delete(self, session_id: str) -> None:
        """Forget the session."""
        with self._lock:
            self._forget(session_id)

    def remember_reply(self, session_id: str, request_id: str, reply: bytes, ttl_s: float) -> None:
        """Keep a reply for retries."""
        del ttl_s  # replies live as long as their session
        with self._lock:
            self._replies[(session_id, request_id)] = reply

    def reply(self, session_id: str, request_id: str) -> bytes | None:
        """The remembered reply, if any."""
        with self._lock:
            return self._replies.get((session_id, request_id))

    def close(self) -> None:
        """Nothing to release."""
