"""``redis://`` and ``rediss://``: session records in a Redis shared by every replica.

Keys of one session share a hash tag (``m2:{<id>}:...``) so they live on one slot of a Redis Cluster, and every
write is one MULTI/EXEC transaction that also refreshes the TTL of all of them. Credentials and TLS options come
from the URL (``rediss://user:password@host:6380/0?ssl_ca_certs=/etc/ca.pem``) and never appear in messages.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from medsam2.store.base import JournalEntry, SessionRecord, StoreUnavailable

_SEPARATOR = b"\x00"


def _keys(session_id: str) -> dict[str, str]:
    base = f"m2:{{{session_id}}}"
    return {
        "record": f"{base}:record",
        "study": f"{base}:study",
        "journal": f"{base}:journal",
        "replies": f"{base}:replies",
    }


class RedisStore:
    """``SessionStore`` on a Redis server (standalone, or one slot per session in a cluster)."""

    url_scheme = "redis"

    def __init__(self, url: str, *, timeout_s: float = 5.0) -> None:
        import redis  # the client is an optional extra: only a server configured with redis:// needs it

        self._errors: tuple[type[Exception], ...] = (redis.exceptions.RedisError, OSError)
        try:
            self._client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        except ValueError as exc:
            raise StoreUnavailable(f"the session store URL is not valid: {exc}") from None

    def _call(self, what: str, fn: Any) -> Any:
        try:
            return fn()
        except self._errors as exc:
            # The exception text can hold the host but never the password; keep only its kind and message.
            raise StoreUnavailable(
                f"session store unavailable while trying to {what}: {type(exc).__name__}: {exc}"
            ) from None

    def ping(self) -> None:
        """Raise ``StoreUnavailable`` unless the server answers (and accepted our credentials)."""
        self._call("ping it", self._client.ping)

    def create(self, record: SessionRecord, study_chunks: Iterable[bytes], ttl_s: float) -> None:
        """Write the record and the study's chunks in one transaction."""
        keys = _keys(record.session_id)
        fields = {
            "owner": record.owner,
            "header": record.header,
            "durable": "1" if record.durable else "0",
            "model_version": "" if record.model_version is None else str(record.model_version),
            "created": repr(record.created),
            "attributes": json.dumps(record.attributes),
        }
        chunks = list(study_chunks)
        ttl_ms = max(int(ttl_s * 1000), 1)

        def write() -> None:
            pipe = self._client.pipeline(transaction=True)
            pipe.delete(*keys.values())
            pipe.hset(keys["record"], mapping=fields)
            if chunks:
                pipe.rpush(keys["study"], *chunks)
            for key in keys.values():
                pipe.pexpire(key, ttl_ms)
            pipe.execute()

        self._call("create a session", write)

    def load(self, session_id: str) -> SessionRecord | None:
        """The record, or None when Redis does not have it (never created, closed, or expired)."""
        raw = self._call("load a session", lambda: self._client.hgetall(_keys(session_id)["record"]))
        if not raw:
            return None
        version = raw.get(b"model_version", b"").decode()
        return SessionRecord(
            session_id=session_id,
            owner=raw[b"owner"].decode(),
            header=raw[b"header"],
            durable=raw.get(b"durable", b"1") == b"1",
            model_version=int(version) if version else None,
            created=float(raw.get(b"created", b"0").decode()),
            attributes=json.loads(raw.get(b"attributes", b"{}").decode()),
        )

    def study(self, session_id: str) -> bytes:
        """The stored chunks, concatenated."""
        return b"".join(self._call("read a study", lambda: self._client.lrange(_keys(session_id)["study"], 0, -1)))

    def append(self, session_id: str, entry: JournalEntry, ttl_s: float) -> int:
        """Append one entry (``method NUL request``) and refresh every key's TTL, atomically."""
        keys = _keys(session_id)
        ttl_ms = max(int(ttl_s * 1000), 1)

        def write() -> int:
            pipe = self._client.pipeline(transaction=True)
            pipe.rpush(keys["journal"], entry.method.encode() + _SEPARATOR + entry.request)
            for key in keys.values():
                pipe.pexpire(key, ttl_ms)
            return int(pipe.execute()[0])

        return self._call("journal a change", write)

    def journal(self, session_id: str) -> list[JournalEntry]:
        """Every entry, oldest first."""
        raw = self._call("read a journal", lambda: self._client.lrange(_keys(session_id)["journal"], 0, -1))
        entries = []
        for item in raw:
            method, _, request = item.partition(_SEPARATOR)
            entries.append(JournalEntry(method.decode(), request))
        return entries

    def touch(self, session_id: str, ttl_s: float) -> None:
        """Refresh the TTL of every key of the session."""
        ttl_ms = max(int(ttl_s * 1000), 1)

        def write() -> None:
            pipe = self._client.pipeline(transaction=True)
            for key in _keys(session_id).values():
                pipe.pexpire(key, ttl_ms)
            pipe.execute()

        self._call("refresh a session", write)

    def delete(self, session_id: str) -> None:
        """Forget the session."""
        self._call("delete a session", lambda: self._client.delete(*_keys(session_id).values()))

    def remember_reply(self, session_id: str, request_id: str, reply: bytes, ttl_s: float) -> None:
        """Keep a reply for retries, with the session's TTL."""
        key = _keys(session_id)["replies"]
        ttl_ms = max(int(ttl_s * 1000), 1)

        def write() -> None:
            pipe = self._client.pipeline(transaction=True)
            pipe.hset(key, request_id, reply)
            pipe.pexpire(key, ttl_ms)
            pipe.execute()

        self._call("remember a reply", write)

    def reply(self, session_id: str, request_id: str) -> bytes | None:
        """The remembered reply, if any."""
        return self._call("read a reply", lambda: self._client.hget(_keys(session_id)["replies"], request_id))

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()
