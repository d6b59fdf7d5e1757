"""Pick a session store from its URL."""

from __future__ import annotations

from urllib.parse import urlsplit

from medsam2.errors import ConfigError
from medsam2.store.base import SessionStore

SCHEMES = ("memory", "redis", "rediss")


def open_store(url: str) -> SessionStore:
    """``memory://`` (the default), ``redis://`` or ``rediss://`` (TLS); anything else is a configuration error."""
    scheme = urlsplit(url).scheme or url.rstrip(":/")
    if scheme == "memory":
        from medsam2.store.memory_store import MemoryStore

        return MemoryStore()
    if scheme in ("redis", "rediss"):
        try:
            from medsam2.store.redis_store import RedisStore
        except ImportError:  # pragma: no cover - the extra is part of the standard install
            raise ConfigError("a redis:// session store needs the redis package: pip install 'medsam2-serving[redis]'")  # noqa: B904
        return RedisStore(url)
    raise ConfigError(
        f"session store URL must start with one of {', '.join(s + '://' for s in SCHEMES)}; got scheme {scheme!r}"
    )
