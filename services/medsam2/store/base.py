"""The session store's interface and the records it keeps."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from medsam2.errors import BackendUnavailable


class StoreUnavailable(BackendUnavailable):
    """The session store cannot be reached or refused a write: nothing was acknowledged."""

    reason = "STORE_UNAVAILABLE"


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One acknowledged change of a session: the RPC's name and its serialized request."""

    method: str
    request: bytes


@dataclass(slots=True)
class SessionRecord:
    """What survives a replica: who owns the session, how to get its study back, and its limits.

    ``header`` is the serialized study header (a PACS reference, or the description of an upload whose voxels are
    kept as ``study_chunks``). ``durable`` is False when an upload was over the store's study cap: such a session
    lives only in its replica's memory.
    """

    session_id: str
    owner: str
    header: bytes
    durable: bool = True
    model_version: int | None = None
    created: float = 0.0
    attributes: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class SessionStore(Protocol):
    """Keeps session records, their uploaded studies and their journals, each with the session's TTL."""

    url_scheme: str
    """``memory`` or ``redis``: for GetServerInfo and logs (never the URL, which may hold a password)."""

    def ping(self) -> None:
        """Raise ``StoreUnavailable`` unless the store answers (and accepts our credentials)."""
        ...

    def create(self, record: SessionRecord, study_chunks: Iterable[bytes], ttl_s: float) -> None:
        """Store a new session (its record and, for uploads, its compressed study) atomically."""
        ...

    def load(self, session_id: str) -> SessionRecord | None:
        """The record of ``session_id``, or None if the store does not know it (or it expired)."""
        ...

    def study(self, session_id: str) -> bytes:
        """The uploaded study's compressed bytes, concatenated in order."""
        ...

    def append(self, session_id: str, entry: JournalEntry, ttl_s: float) -> int:
        """Append one entry to the journal and refresh the TTL; returns the journal's new length."""
        ...

    def journal(self, session_id: str) -> list[JournalEntry]:
        """Every journal entry, oldest first."""
        ...

    def touch(self, session_id: str, ttl_s: float) -> None:
        """Refresh the session's TTL."""
        ...

    def delete(self, session_id: str) -> None:
        """Forget the session; idempotent."""
        ...

    def remember_reply(self, session_id: str, request_id: str, reply: bytes, ttl_s: float) -> None:
        """Keep the reply to an idempotent request, so a retry after a failover gets the same answer."""
        ...

    def reply(self, session_id: str, request_id: str) -> bytes | None:
        """The reply remembered for ``request_id``, if any."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...
