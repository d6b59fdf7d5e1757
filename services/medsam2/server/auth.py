"""Who is calling: principals from bearer tokens (a tokens file or one shared token) or mTLS client certificates.

- ``--auth-tokens FILE``: one ``principal:token`` per line (``#`` comments and
  blank lines allowed), reloaded on SIGHUP. Tokens are compared in constant
  time (``hmac.compare_digest``) against every entry, so the time taken says
  nothing about which entry came close.
- ``--auth-token TOKEN``: shorthand for a tokens file holding ``default:TOKEN``.
- With mTLS the client certificate's subject is the principal of calls that
  send no bearer token (the TLS handshake has already verified it).
- With none of these the service is open and every caller is ``anonymous``.
- ``--admin-principals``: the principals allowed admin RPCs (``SetModelVersion``),
  separated by ``;`` since certificate subjects contain commas; nobody by default.

The ``@rpc`` decorator binds the caller's principal for the duration of one
RPC (``bind``/``current_principal``), which is how the session registry
enforces ownership without the servicer passing it around.
"""

from __future__ import annotations

import contextvars
import hmac
import logging
import signal
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from medsam2.errors import ConfigError, PermissionDenied, Unauthenticated

log = logging.getLogger(__name__)

ANONYMOUS = "anonymous"
"""The principal of every caller when the service has no credentials configured."""
SHARED_TOKEN_PRINCIPAL = "default"
"""The principal of the single ``--auth-token``."""

_caller: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar("medsam2_caller", default=None)


class Authenticator:
    """Maps a call's credentials to a principal name."""

    def __init__(
        self, *, tokens_file: Path | None = None, token: str = "", mtls: bool = False, admins: Iterable[str] = ()
    ) -> None:
        self.tokens_file = tokens_file
        self.mtls = mtls
        self.admins = frozenset(admins)
        """Principals allowed admin RPCs."""
        self._shared = token
        self._tokens: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self.reload()

    @property
    def tokens_required(self) -> bool:
        """Whether calls must carry a bearer token (unless they come with a verified client certificate)."""
        return bool(self._tokens)

    @property
    def principals(self) -> list[str]:
        """Principals that hold a token."""
        return sorted({principal for principal, _ in self._tokens})

    def reload(self) -> None:
        """(Re)read the tokens file; a broken file raises ``ConfigError`` and leaves the previous tokens in place."""
        tokens = [(SHARED_TOKEN_PRINCIPAL, self._shared.encode())] if self._shared else []
        if self.tokens_file is not None:
            tokens += _read_tokens(self.tokens_file)
        with self._lock:
            self._tokens = tokens
        log.info(
            "auth: %d principal(s) with tokens%s",
            len({p for p, _ in tokens}),
            ", mTLS subjects accepted" if self.mtls else "",
        )

    def principal_for_token(self, token: str) -> str | None:
        """The principal holding ``token``, or None; every entry is compared, each in constant time."""
        given = token.encode()
        found = None
        with self._lock:
            entries = list(self._tokens)
        for principal, expected in entries:
            if hmac.compare_digest(expected, given):
                found = principal
        return found

    def admits(self, metadata: Any) -> bool:
        """Whether a call with this invocation metadata may proceed (used before the handler runs)."""
        if not self.tokens_required:
            return True
        header = _authorization(metadata)
        if header is None:
            return self.mtls
        return self._principal_for_header(header) is not None

    def principal_of(self, context: Any) -> str:
        """The principal of a call (bearer token first, then the client certificate); raises ``Unauthenticated``."""
        if self.tokens_required:
            header = _authorization(context.invocation_metadata())
            if header is not None:
                principal = self._principal_for_header(header)
                if principal is None:
                    raise Unauthenticated("wrong bearer token")
                return principal
        if self.mtls:
            subject = certificate_subject(context.auth_context())
            if subject:
                return subject
        if self.tokens_required or self.mtls:
            raise Unauthenticated("missing credentials: send 'authorization: Bearer <token>' or a client certificate")
        return ANONYMOUS

    def require_admin(self, principal: str | None, action: str) -> None:
        """Raise ``PermissionDenied`` unless ``principal`` is an admin (``action`` names what was refused)."""
        if principal is None or principal not in self.admins:
            raise PermissionDenied(
                f"{action} is for admins only, and principal {principal or '(none)'!r} is not one "
                "(--admin-principals / MEDSAM2_ADMIN_PRINCIPALS)"
            )

    def _principal_for_header(self, header: str) -> str | None:
        scheme, _, token = header.partition(" ")
        return self.principal_for_token(token.strip()) if scheme.lower() == "bearer" else None


def parse_principals(text: str) -> tuple[str, ...]:
    """Principal names from a ``;``-separated setting (blanks around names and empty entries dropped)."""
    return tuple(name.strip() for name in text.split(";") if name.strip())


def certificate_subject(auth_context: dict[str, list[bytes]] | None) -> str:
    """The verified client certificate's subject (``CN=...`` if grpc gives only the common name), or ''."""
    if not auth_context:
        return ""
    for key, prefix in (("x509_subject", ""), ("x509_common_name", "CN=")):
        values = auth_context.get(key) or []
        if values:
            return prefix + values[0].decode("utf-8", "replace")
    return ""


def reload_on_sighup(authenticator: Authenticator | None, *, also: Callable[[], None] | None = None) -> Any:
    """Reload the tokens file on SIGHUP (main thread only), then run ``also``; returns the previous handler."""

    def on_hup(signum: int, frame: Any) -> None:
        if authenticator is not None:
            try:
                authenticator.reload()
            except ConfigError as exc:
                log.error("auth: tokens file not reloaded, keeping the previous tokens: %s", exc)
        if also is not None:
            also()

    return signal.signal(signal.SIGHUP, on_hup)


def bind(principal: str, rpc: str) -> object:
    """Make ``principal`` the caller of the RPC running on this thread; returns the binding for ``unbind``."""
    binding = (principal, rpc)
    _caller.set(binding)
    return binding


def unbind(binding: object) -> None:
    """Forget this thread's caller if it is still ``binding``.

    A stream abandoned by its client is finalised later, possibly on a thread already serving another RPC:
    that RPC's caller must survive the late clean-up.
    """
    if _caller.get() is binding:
        _caller.set(None)


def current_principal() -> str | None:
    """The principal of the RPC running on this thread, or None outside an RPC."""
    caller = _caller.get()
    return caller[0] if caller else None


def current_rpc() -> str:
    """The RPC running on this thread ('' outside an RPC)."""
    caller = _caller.get()
    return caller[1] if caller else ""


def _authorization(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key == "authorization":
            return value if isinstance(value, str) else value.decode("latin-1")
    return None


def _read_tokens(path: Path) -> list[tuple[str, bytes]]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the tokens file {path}: {exc.strerror}") from exc
    tokens = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        principal, sep, token = line.partition(":")
        principal, token = principal.strip(), token.strip()
        if not sep or not principal or not token:
            # Never echo the line: it may hold a token.
            raise ConfigError(f"{path}:{number}: expected 'principal:token'")
        tokens.append((principal, token.encode()))
    return tokens
