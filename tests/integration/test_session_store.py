"""The session store: the in-memory default and a real Redis (AUTH, TLS, AOF persistence, TTL)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from medsam2.errors import ConfigError
from medsam2.store import JournalEntry, SessionRecord, StoreUnavailable, open_store
from medsam2.store.base import SessionStore
from medsam2.store.memory_store import MemoryStore
from pki import make_certificates, needs_openssl
from redis_server import RedisServer, unavailable_reason

needs_redis = pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason()))


def record(session_id: str = "s1") -> SessionRecord:
    return SessionRecord(
        session_id=session_id,
        owner="alice",
        header=b"\x08\x01header\x00bytes",
        model_version=2,
        created=12.5,
        attributes={"modality": "CT"},
    )


@pytest.fixture()
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", password="s3cret-pw", appendonly=True).start()
    yield server
    server.stop()


@pytest.fixture(params=["memory", pytest.param("redis", marks=needs_redis)])
def store(request: pytest.FixtureRequest) -> Iterator[SessionStore]:
    if request.param == "memory":
        opened = open_store("memory://")
    else:
        opened = open_store(request.getfixturevalue("redis_server").url)
    yield opened
    opened.close()


def test_a_record_its_study_and_journal_round_trip(store: SessionStore) -> None:
    store.create(record(), [b"chunk-1", b"chunk-2"], ttl_s=60)
    loaded = store.load("s1")
    assert loaded == record()
    assert store.study("s1") == b"chunk-1chunk-2"
    assert store.append("s1", JournalEntry("AddPrompt", b"\x01\x02\x00\x03"), ttl_s=60) == 1
    assert store.append("s1", JournalEntry("Propagate", b""), ttl_s=60) == 2
    assert store.journal("s1") == [JournalEntry("AddPrompt", b"\x01\x02\x00\x03"), JournalEntry("Propagate", b"")]


def test_unknown_and_deleted_sessions_are_none_and_delete_is_idempotent(store: SessionStore) -> None:
    assert store.load("nope") is None
    store.create(record(), [], ttl_s=60)
    store.delete("s1")
    store.delete("s1")
    assert store.load("s1") is None and store.journal("s1") == []


def test_replies_are_remembered_per_session(store: SessionStore) -> None:
    store.create(record(), [], ttl_s=60)
    store.remember_reply("s1", "req-7", b"reply", ttl_s=60)
    assert store.reply("s1", "req-7") == b"reply"
    assert store.reply("s1", "req-8") is None


def test_records_expire_after_their_ttl_and_a_write_refreshes_it(store: SessionStore) -> None:
    # Generous margins: a loaded CI machine may oversleep by a few hundred milliseconds.
    store.create(record(), [b"x"], ttl_s=1.5)
    time.sleep(0.9)
    store.append("s1", JournalEntry("AddPrompt", b"p"), ttl_s=1.5)
    time.sleep(0.9)
    assert store.load("s1") is not None, "the append refreshed the TTL"
    time.sleep(1.7)
    assert store.load("s1") is None


def test_memory_store_expiry_follows_its_clock() -> None:
    now = [0.0]
    store = MemoryStore(clock=lambda: now[0])
    store.create(record(), [], ttl_s=10)
    now[0] = 9.9
    assert store.load("s1") is not None
    now[0] = 20.0
    assert store.load("s1") is None


@needs_redis
def test_acknowledged_writes_survive_a_redis_restart_with_aof(redis_server: RedisServer) -> None:
    store = open_store(redis_server.url)
    store.create(record(), [b"study"], ttl_s=600)
    store.append("s1", JournalEntry("AddPrompt", b"box"), ttl_s=600)
    store.close()
    redis_server.stop(kill=True)  # no clean shutdown: only the fsynced AOF keeps the data
    redis_server.start()
    reopened = open_store(redis_server.url)
    assert reopened.load("s1") == record()
    assert reopened.journal("s1") == [JournalEntry("AddPrompt", b"box")]
    reopened.close()


@needs_redis
def test_a_wrong_password_is_unavailable_and_never_echoed(redis_server: RedisServer) -> None:
    bad = open_store(redis_server.url.replace("s3cret-pw", "wrong-pw"))
    with pytest.raises(StoreUnavailable, match="session store unavailable") as caught:
        bad.load("s1")
    assert "wrong-pw" not in str(caught.value) and "s3cret-pw" not in str(caught.value)


@needs_redis
def test_an_unreachable_redis_is_unavailable(redis_server: RedisServer) -> None:
    url = redis_server.url
    redis_server.stop()
    with pytest.raises(StoreUnavailable, match="ConnectionError"):
        open_store(url).append("s1", JournalEntry("AddPrompt", b""), ttl_s=5)


@needs_redis
@needs_openssl
def test_tls_with_a_private_ca(tmp_path: Path) -> None:
    make_certificates(tmp_path, server="redis")
    server = RedisServer(
        tmp_path / "data", password="pw", tls=(tmp_path / "redis.pem", tmp_path / "redis.key", tmp_path / "ca.pem")
    ).start()
    try:
        store = open_store(server.url)
        store.create(record(), [b"z"], ttl_s=60)
        assert store.load("s1") == record()
        store.close()
        plain = open_store(server.url.replace("rediss://", "redis://").split("?")[0])
        with pytest.raises(StoreUnavailable):
            plain.load("s1")
    finally:
        server.stop()


def test_unknown_store_schemes_are_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="must start with one of memory://, redis://, rediss://"):
        open_store("postgres://db")
