"""Bounded HTTP GETs to one PACS endpoint: every byte counted against a budget, every second against a deadline.

A DICOMweb server is another hospital system, sometimes misconfigured and
sometimes hostile, so nothing it sends is taken on trust:

- a ``Transfer`` is one fetch (its QIDO-RS searches and its WADO-RS download);
  it has one overall deadline (the endpoint's ``fetch_deadline_s``), and each
  connect or read also waits at most the endpoint's ``timeout_s``;
- each response is read with a byte budget fixed before the request is sent;
  reading stops at the budget, whatever the body or its ``Content-Length`` says;
- ``Cancel`` stops a transfer from another thread (a gRPC client that left, the
  deadline's timer): the socket is shut down, so a blocked read returns at once.

The standard library's ``http.client`` does the HTTP (chunked bodies, TLS);
only ``read1`` is used, so a trickling server is noticed after every byte.
"""

from __future__ import annotations

import functools
import http.client
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from urllib.parse import urlencode, urlsplit

from medsam2.errors import ClientCancelled, NotFound
from medsam2.pacs.config import PacsEndpoint
from medsam2.pacs.errors import (
    PacsAccessDenied,
    PacsBadResponse,
    PacsRefused,
    PacsTimedOut,
    PacsTooLarge,
    PacsTransferBroken,
    PacsUnavailable,
)

log = logging.getLogger(__name__)

READ_BYTES = 1 << 16
"""Largest single read from the socket."""
MAX_ATTEMPTS = 3
"""Tries per request on a refused connection or HTTP 408/429/502/503/504, before any body byte is read."""
BACKOFF_S = 0.25
"""First wait between tries, doubled each time (within the fetch's deadline)."""
_RETRY_STATUSES = frozenset({408, 429, 502, 503, 504})
_ERROR_BODY_BYTES = 4096
WATCH_S = 0.25
"""How often a running transfer looks at its deadline and its client."""
CLIENT_LEFT = "the client left"
DEADLINE_PASSED = "the deadline passed"


class Cancel:
    """A stop signal one thread sets and a transfer obeys at once (its hooks shut the open socket).

    ``alive``, when given, is polled while a transfer runs (a gRPC or HTTP call's ``is_active``): once it says
    False, the transfer is cancelled as if its client had left.
    """

    def __init__(self, alive: Callable[[], bool] | None = None) -> None:
        self._lock = threading.Lock()
        self._reason = ""
        self._hooks: list[Callable[[], None]] = []
        self.alive = alive

    @property
    def reason(self) -> str:
        """Why the transfer was stopped ('' while it may run)."""
        return self._reason

    def cancel(self, reason: str) -> None:
        """Stop: record ``reason`` (the first one wins) and run every hook."""
        with self._lock:
            if self._reason:
                return
            self._reason = reason
            hooks = list(self._hooks)
        for hook in hooks:
            hook()

    def hook(self, fn: Callable[[], None]) -> Callable[[], None]:
        """Run ``fn`` on cancel (at once if already cancelled); returns the function that removes it."""
        with self._lock:
            if not self._reason:
                self._hooks.append(fn)
                return lambda: self._unhook(fn)
        fn()
        return lambda: None

    def _unhook(self, fn: Callable[[], None]) -> None:
        with self._lock:
            if fn in self._hooks:
                self._hooks.remove(fn)


class Transfer:
    """One fetch from ``endpoint``: an overall deadline, a per-read timeout, and a ``Cancel`` that ends it."""

    def __init__(self, endpoint: PacsEndpoint, cancel: Cancel | None = None) -> None:
        self.endpoint = endpoint
        self.cancel = cancel or Cancel()
        self.deadline_s = endpoint.fetch_deadline_s
        self.started = time.monotonic()
        self.deadline = self.started + self.deadline_s
        self._done = threading.Event()
        self._watch = threading.Thread(target=self._watch_loop, name="medsam2-pacs-watch", daemon=True)
        self._watch.start()
        self.received = 0
        """Bytes read off the wire so far, every response together."""

    def close(self) -> None:
        """Stop watching (the transfer is over)."""
        self._done.set()

    def __enter__(self) -> Transfer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _watch_loop(self) -> None:
        """Cancel the transfer when its deadline passes or its client leaves, even while a read blocks."""
        alive = self.cancel.alive
        while not self._done.wait(min(WATCH_S, max(0.0, self.deadline - time.monotonic()))):
            if time.monotonic() >= self.deadline:
                self.cancel.cancel(DEADLINE_PASSED)
                return
            if alive is not None and not alive():
                self.cancel.cancel(CLIENT_LEFT)
                return
            if self.cancel.reason:
                return

    def check(self) -> None:
        """Raise if the transfer was cancelled or its deadline passed."""
        reason = self.cancel.reason
        if not reason and time.monotonic() >= self.deadline:
            reason = DEADLINE_PASSED
        if reason == CLIENT_LEFT:
            raise ClientCancelled(f"the client left while fetching from PACS {self.endpoint.name}")
        if reason:
            raise PacsTimedOut(
                f"the fetch from PACS {self.endpoint.name} did not finish within {self.deadline_s:g} s "
                "(its fetch_deadline_s); the PACS is too slow or stalled"
            )

    def get(
        self,
        path: str,
        *,
        query: Mapping[str, str | int] | None = None,
        accept: str,
        budget: int,
        action: str,
        allow: tuple[int, ...] = (),
    ) -> Response:
        """Send a GET for ``path`` under the endpoint's URL; the answer's body may hold at most ``budget`` bytes.

        A status other than 200 raises its error, unless ``allow`` names it (the caller then looks).
        """
        url = urlsplit(self.endpoint.url)
        target = url.path.rstrip("/") + path + (f"?{urlencode(query)}" if query else "")
        headers = {"Accept": accept, **self.endpoint.headers()}
        wait = BACKOFF_S
        for attempt in range(1, MAX_ATTEMPTS + 1):
            self.check()
            connection = self._connect(url.scheme, url.netloc)
            unhook = self.cancel.hook(functools.partial(_shut, connection))
            try:
                self.check()  # cancelled between the check above and the hook: the hook found no socket to shut
                try:
                    connection.request("GET", target, headers=headers)
                    answer = connection.getresponse()
                except (OSError, http.client.HTTPException) as exc:
                    unhook()
                    connection.close()
                    self.check()  # a cancelled or late transfer says so, not "cannot reach"
                    if attempt < MAX_ATTEMPTS and isinstance(exc, ConnectionRefusedError):
                        self._pause(wait)
                        wait *= 2
                        continue
                    log.warning(
                        "cannot reach PACS %s at %s to %s: %s", self.endpoint.name, self.endpoint.url, action, exc
                    )
                    raise PacsUnavailable(
                        f"cannot reach PACS {self.endpoint.name} to {action}: {type(exc).__name__}"
                    ) from exc
            except BaseException:
                unhook()
                connection.close()
                raise
            if answer.status in _RETRY_STATUSES and attempt < MAX_ATTEMPTS:
                unhook()
                connection.close()
                self._pause(wait)
                wait *= 2
                continue
            response = Response(self, connection, answer, unhook, budget=budget, action=action)
            if answer.status != 200 and answer.status not in allow:
                response.fail()
            return response
        raise AssertionError("unreachable")  # the last attempt returns or raises

    def get_json(
        self, path: str, *, query: Mapping[str, str | int] | None = None, budget: int, action: str
    ) -> list[dict]:
        """A QIDO-RS (or metadata) GET whose answer is a JSON list of objects; 204 is an empty list."""
        with self.get(
            path, query=query, accept="application/dicom+json", budget=budget, action=action, allow=(204,)
        ) as response:
            if response.status == 204:
                return []
            kind = response.content_type
            if kind not in ("application/dicom+json", "application/json"):
                raise PacsBadResponse(
                    f"PACS {self.endpoint.name} answered {action} with content type {kind or 'none'!r}, "
                    "not application/dicom+json"
                )
            body = response.read_all()
        try:
            found = json.loads(body) if body.strip() else []
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PacsBadResponse(f"PACS {self.endpoint.name} answered {action} with malformed JSON ({exc})") from exc
        if not isinstance(found, list) or not all(isinstance(item, dict) for item in found):
            raise PacsBadResponse(
                f"PACS {self.endpoint.name} answered {action} with JSON that is not a list of objects"
            )
        return found

    def _connect(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        timeout = self.endpoint.timeout_s
        if scheme == "https":
            return http.client.HTTPSConnection(netloc, timeout=timeout, context=_tls_context())
        return http.client.HTTPConnection(netloc, timeout=timeout)

    def _pause(self, seconds: float) -> None:
        left = self.deadline - time.monotonic()
        time.sleep(max(0.0, min(seconds, left)))


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """The system's trusted CAs and, as requests (used for STOW-RS) trusts them, certifi's."""
    context = ssl.create_default_context()
    try:
        import certifi

        context.load_verify_locations(certifi.where())
    except (ImportError, OSError):
        pass
    return context


def _shut(connection: http.client.HTTPConnection) -> None:
    """Unblock a read in another thread: shut the socket down (closing alone does not wake a blocked recv)."""
    sock = connection.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class Response:
    """One answer's body, read in bounded pieces; closed (with its connection) on exit."""

    def __init__(
        self,
        transfer: Transfer,
        connection: http.client.HTTPConnection,
        answer: http.client.HTTPResponse,
        unhook: Callable[[], None],
        *,
        budget: int,
        action: str,
    ) -> None:
        self.transfer = transfer
        self.connection = connection
        self.answer = answer
        self.status = answer.status
        self.budget = budget
        self.action = action
        self.read_bytes = 0
        self._unhook = unhook
        declared = answer.getheader("Content-Length")
        if declared is not None and declared.strip().isdigit() and int(declared) > budget and answer.status == 200:
            self.close()
            self._too_large(f"it announces {int(declared)} bytes")

    @property
    def content_type(self) -> str:
        """The media type (lower case, without parameters)."""
        return (self.answer.getheader("Content-Type") or "").split(";")[0].strip().lower()

    def header(self, name: str) -> str:
        """A response header ('' when absent)."""
        return self.answer.getheader(name) or ""

    def read1(self, size: int = READ_BYTES) -> bytes:
        """Up to ``size`` bytes as soon as any arrive; b'' at the end of the body."""
        transfer = self.transfer
        transfer.check()
        left = self.budget - self.read_bytes
        if left <= 0:
            # One byte more tells a body that ends exactly at the budget from one that goes on.
            size = 1
        try:
            data = self.answer.read1(min(size, max(left, 1)))
        except (OSError, http.client.HTTPException, ValueError) as exc:
            transfer.check()  # stopped from outside: say why, not how the socket broke
            if isinstance(exc, TimeoutError):
                raise PacsUnavailable(
                    f"PACS {transfer.endpoint.name} sent nothing for {transfer.endpoint.timeout_s:g} s (its "
                    f"timeout_s) while answering {self.action}"
                ) from exc
            raise PacsTransferBroken(
                f"the answer of PACS {transfer.endpoint.name} to {self.action} broke off after "
                f"{self.read_bytes} bytes ({type(exc).__name__})"
            ) from exc
        if not data:
            transfer.check()
            return b""
        self.read_bytes += len(data)
        transfer.received += len(data)
        if self.read_bytes > self.budget:
            self.close()
            self._too_large("its body goes on")
        return data

    def chunks(self) -> Iterator[bytes]:
        """The body piece by piece, each counted against the budget."""
        while data := self.read1():
            yield data

    def read_all(self) -> bytes:
        """The whole body (within the budget)."""
        return b"".join(self.chunks())

    def fail(self) -> None:
        """Raise the error a non-200 status stands for (reading at most a few KB of the body for the log)."""
        endpoint, status = self.transfer.endpoint, self.status
        try:
            self.answer.read1(_ERROR_BODY_BYTES)
        except (OSError, http.client.HTTPException, ValueError):
            pass
        self.close()
        # Messages reach remote clients: they name the endpoint, never its URL (the operator's log has it).
        log.warning("PACS %s (%s) answered HTTP %s to %s", endpoint.name, endpoint.url, status, self.action)
        detail = f"PACS {endpoint.name} answered HTTP {status} to {self.action}"
        if status == 404:
            raise NotFound(f"{detail}: not found")
        if status in (401, 403):
            raise PacsAccessDenied(f"{detail}: check the endpoint's token")
        if status >= 500 or status in _RETRY_STATUSES:
            raise PacsUnavailable(f"{detail}: the PACS failed; try again later")
        # Only reads go through here (GET); a refused store is PacsRejected (client.pacs_errors).
        raise PacsRefused(f"{detail}: {self.answer.reason or 'refused'}")

    def close(self) -> None:
        """Drop the connection (a body not read to its end cannot be reused)."""
        self._unhook()
        self.connection.close()

    def _too_large(self, why: str) -> None:
        endpoint = self.transfer.endpoint
        log.warning("PACS %s: the answer to %s passed its budget of %d bytes", endpoint.name, self.action, self.budget)
        raise PacsTooLarge(
            f"PACS {endpoint.name} sent more than the {self.budget} bytes allowed for {self.action} ({why}); "
            "the budget follows from what QIDO-RS announced and the service's study limits"
        )

    def __enter__(self) -> Response:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
