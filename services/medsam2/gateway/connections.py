"""The gateway's listener: every connection is counted, and one takes a worker only while it has a request to serve.

Why not ``ThreadingHTTPServer``: it starts a thread per connection, so 800 slow or idle clients are 800 threads
and nothing says no. Here one thread accepts connections and watches them with a selector: an idle connection, or
one that trickles its request head, costs a file descriptor and a buffer (at most ``MAX_HEAD_BYTES``), not a
thread. A connection goes to a bounded pool of worker threads only once its whole request head has arrived, and
comes back to the selector when its request is answered and nothing more is buffered (HTTP keep-alive). Beyond
``max_connections`` open connections, or when every worker is busy and the queue is full, the answer is 503 with
``Retry-After``, written without reading the request. A head not complete within ``header_timeout_s`` is dropped.
Under TLS the handshake runs on a worker (bounded by ``TLS_HANDSHAKE_TIMEOUT_S``); the head is then read here too.
"""

from __future__ import annotations

import errno
import json
import logging
import queue
import resource
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from medsam2.gateway.context import catalogued
from medsam2.gateway.context import refusal as gateway_refusal

log = logging.getLogger(__name__)

RETRY_AFTER_S = 1
"""What a refused client is told to wait before it tries again."""
TLS_HANDSHAKE_TIMEOUT_S = 10.0
"""A TLS handshake that takes longer is dropped (a client that connects and sends nothing waits in the selector)."""
MAX_HEAD_BYTES = 128 * 1024
"""A request head (request line and headers) longer than this is refused with 431 before a worker sees it."""
_HEAD_ENDS = (b"\r\n\r\n", b"\n\n")


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """How many clients the listener holds and serves at once."""

    workers: int = 32
    """Requests served at once (a server-sent event stream holds one for its whole length)."""
    queued: int = 32
    """Connections with a request waiting for a worker; beyond it, 503."""
    max_connections: int = 4096
    """Open connections at most (idle ones included); beyond it, 503."""
    idle_timeout_s: float = 120.0
    """An open connection that sends nothing for this long is closed."""
    header_timeout_s: float = 30.0
    """A request head that is not complete this long after its first byte is dropped (a slow-headers client)."""


@dataclass(slots=True, eq=False)
class Connection:
    """One client connection: its socket, its peer and when it last did something."""

    sock: socket.socket
    address: Any
    since: float = field(default_factory=time.monotonic)
    handshaken: bool = False
    head: bytearray = field(default_factory=bytearray)
    """The bytes of the next request read so far by the selector (the handler reads them first)."""
    head_since: float = 0.0


def refusal(message: str, *, http_status: int = 503) -> bytes:
    """A complete 503 (GATEWAY_BUSY, with Retry-After) or 431 (HEADERS_TOO_LARGE) response with the gateway's JSON
    error body: the catalogue's status and details, built as every other gateway refusal is (context.refusal)."""
    busy = http_status == 503
    if busy:
        error = catalogued(message, reason="GATEWAY_BUSY", retry_after_s=RETRY_AFTER_S)
    else:
        error = catalogued(message, reason="HEADERS_TOO_LARGE")
    payload, headers = gateway_refusal(http_status, error)
    body = json.dumps(payload)
    phrase = "Service Unavailable" if busy else "Request Header Fields Too Large"
    head = (
        f"HTTP/1.1 {http_status} {phrase}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        + "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        + "Cache-Control: no-store\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body.encode()


def _allow_descriptors(wanted: int) -> None:
    """Raise this process's soft file-descriptor limit toward ``wanted`` (as far as the hard limit allows)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-files limit to %d for the HTTP gateway: %s", target, exc)


class BoundedHTTPServer:
    """Listens on ``address``; ``serve(connection)`` answers a connection's requests on a worker thread.

    ``serve`` returns True to keep the connection open (it goes back to the selector), False to close it.
    The interface matches what ``socketserver`` offers its callers: ``server_address``, ``serve_forever``,
    ``shutdown`` and ``server_close``.
    """

    def __init__(
        self,
        address: tuple[str, int],
        serve: Callable[[Connection], bool],
        limits: ConnectionLimits,
        *,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._serve = serve
        self.limits = limits
        self.tls = tls
        _allow_descriptors(limits.max_connections + 256)
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind(address)
            self.socket.listen(1024)
        except OSError:
            self.socket.close()
            raise
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._returned: queue.SimpleQueue[Connection] = queue.SimpleQueue()
        self._work: queue.Queue[Connection | None] = queue.Queue()
        self._lock = threading.Lock()
        self._open = 0  # every connection accepted and not yet closed
        self._busy = 0  # connections handed to the pool (queued or being served)
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._workers = [
            threading.Thread(target=self._worker, name=f"medsam2-http-{i}", daemon=True) for i in range(limits.workers)
        ]
        for worker in self._workers:
            worker.start()

    # -- the selector thread ----------------------------------------------------------
    def serve_forever(self) -> None:
        """Accept and watch connections until ``shutdown``."""
        self._selector.register(self.socket, selectors.EVENT_READ, None)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        idle: dict[socket.socket, Connection] = {}
        try:
            while not self._stop.is_set():
                for key, _ in self._selector.select(timeout=1.0):
                    if key.fileobj is self.socket:
                        self._accept(idle)
                    elif key.fileobj is self._wake_r:
                        self._drain_wakeups()
                    else:
                        self._readable(idle[key.fileobj], idle)  # type: ignore[index]
                while True:
                    try:
                        connection = self._returned.get_nowait()
                    except queue.Empty:
                        break
                    connection.since = time.monotonic()
                    idle[connection.sock] = connection
                    self._selector.register(connection.sock, selectors.EVENT_READ, None)
                    if isinstance(connection.sock, ssl.SSLSocket) and connection.sock.pending():
                        self._readable(connection, idle)  # decrypted bytes the selector cannot see
                self._sweep(idle)
        finally:
            for connection in idle.values():
                self._selector.unregister(connection.sock)
                self._close(connection)
            self._selector.close()
            self._stopped.set()

    def _accept(self, idle: dict[socket.socket, Connection]) -> None:
        for _ in range(64):  # accept what is waiting, but let the rest of the loop run too
            try:
                sock, address = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of file descriptors, or the client reset before accept
                log.warning("HTTP accept failed: %s", exc)
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    time.sleep(0.05)  # the listener stays readable: do not spin while descriptors are short
                return
            with self._lock:
                full = self._open >= self.limits.max_connections
                if not full:
                    self._open += 1
            if full:
                self._refuse(sock, f"the gateway holds {self.limits.max_connections} connections already")
                continue
            sock.setblocking(False)
            connection = Connection(sock, address)
            idle[sock] = connection
            self._selector.register(sock, selectors.EVENT_READ, None)

    def _readable(self, connection: Connection, idle: dict[socket.socket, Connection]) -> None:
        """Read what arrived of the request head; hand the connection to a worker once the head is whole."""
        if self.tls is not None and not connection.handshaken:
            self._leave(connection, idle)
            self._dispatch(connection)
            return
        try:
            chunk = connection.sock.recv(MAX_HEAD_BYTES + 1 - len(connection.head))
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        except OSError:
            chunk = b""
        if not chunk:  # the client closed (or reset) the connection
            self._leave(connection, idle)
            self._close(connection)
            return
        if not connection.head:
            connection.head_since = time.monotonic()
        connection.head += chunk
        if any(end in connection.head for end in _HEAD_ENDS):
            self._leave(connection, idle)
            self._dispatch(connection)
        elif len(connection.head) > MAX_HEAD_BYTES:
            self._leave(connection, idle)
            self._refuse(
                connection.sock,
                f"the request head is longer than {MAX_HEAD_BYTES} bytes (send a large upload header at the start "
                "of the body: application/vnd.medsam2.upload)",
                http_status=431,
            )
            with self._lock:
                self._open -= 1

    def _leave(self, connection: Connection, idle: dict[socket.socket, Connection]) -> None:
        del idle[connection.sock]
        self._selector.unregister(connection.sock)

    def _dispatch(self, connection: Connection) -> None:
        with self._lock:
            full = self._busy >= self.limits.workers + self.limits.queued
            if not full:
                self._busy += 1
        if full:
            self._refuse(
                connection.sock, f"all {self.limits.workers} HTTP workers are busy and {self.limits.queued} wait"
            )
            with self._lock:
                self._open -= 1
            return
        self._work.put(connection)

    def _sweep(self, idle: dict[socket.socket, Connection]) -> None:
        now = time.monotonic()
        for connection in list(idle.values()):
            stalled = connection.head and now - connection.head_since > self.limits.header_timeout_s
            if stalled or now - connection.since > self.limits.idle_timeout_s:
                self._leave(connection, idle)
                self._close(connection)

    def _drain_wakeups(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _refuse(self, sock: socket.socket, message: str, *, http_status: int = 503) -> None:
        """503 (or 431) without reading the request, and without ever blocking the selector thread."""
        log.info("HTTP connection refused: %s", message)
        try:
            sock.setblocking(False)
            if self.tls is None or isinstance(sock, ssl.SSLSocket):  # plain text to a TLS client is noise
                sock.send(refusal(message, http_status=http_status))
                sock.shutdown(socket.SHUT_WR)
                # Read what already arrived, so closing does not reset the connection before the answer is read.
                sock.recv(1 << 16)
        except OSError:
            pass
        finally:
            sock.close()

    def _close(self, connection: Connection) -> None:
        try:
            connection.sock.close()
        finally:
            with self._lock:
                self._open -= 1

    # -- the workers --------------------------------------------------------------------
    def _worker(self) -> None:
        while True:
            connection = self._work.get()
            if connection is None:
                return
            keep = False
            try:
                if self.tls is not None and not connection.handshaken:
                    keep = self._handshake(connection)  # then back to the selector, which reads the head
                else:
                    connection.sock.settimeout(None)
                    keep = self._serve(connection)
            except Exception:  # the handler logs what it can; nothing may kill a worker
                log.exception("HTTP connection from %s failed", connection.address[0])
            finally:
                with self._lock:
                    self._busy -= 1
            if keep and not self._stop.is_set():
                connection.sock.setblocking(False)
                self._returned.put(connection)
                try:
                    self._wake_w.send(b"\0")
                except OSError:  # the wakeup pipe is full: the selector is awake anyway
                    pass
            else:
                self._close(connection)

    def _handshake(self, connection: Connection) -> bool:
        """Wrap the socket in TLS (on a worker: a slow handshake never stalls accept())."""
        assert self.tls is not None
        connection.sock.settimeout(TLS_HANDSHAKE_TIMEOUT_S)
        try:
            connection.sock = self.tls.wrap_socket(connection.sock, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            log.info("TLS handshake with %s failed: %s", connection.address[0], exc)
            return False
        connection.handshaken = True
        return True

    # -- lifecycle ----------------------------------------------------------------------
    def shutdown(self) -> None:
        """Stop accepting and wait until the selector thread has closed the idle connections."""
        self._stop.set()
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass
        if self._selector.get_map() is not None and not self._stopped.wait(10):
            log.warning("the HTTP listener did not stop within 10 s")

    def server_close(self) -> None:
        """Close the listening socket and let the workers end once their requests are answered."""
        self.socket.close()
        for _ in self._workers:
            self._work.put(None)
        self._wake_r.close()
        self._wake_w.close()

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no connection is being served (True), or ``timeout_s`` passed (False); for the drain."""
        deadline = time.monotonic() + max(timeout_s, 0.0)
        while True:
            with self._lock:
                if not self._busy:
                    return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    @property
    def open_connections(self) -> int:
        """Connections accepted and not yet closed."""
        with self._lock:
            return self._open
