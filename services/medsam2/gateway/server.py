"""The HTTP gateway: REST/JSON over the same servicer objects (and interceptors) as the gRPC server, plus the viewer.

Why the standard library's ``BaseHTTPRequestHandler`` on our own bounded listener (``connections.py``): the
servicer is synchronous and already thread-safe (it runs on gRPC's thread pool), so a worker thread per request
in flight matches it exactly; server-sent events and streamed uploads need nothing more than a socket; and no new
runtime dependency (or an ASGI stack beside gRPC's own threads) has to be kept patched in a medical service. The
gateway binds the same host as the gRPC server and serves TLS with the same certificate when it is configured.

Every request is judged before its body is read: the route, then the interceptors that can judge a call from
its headers (the bearer token), then the declared length against the limit. Only then is the body opened (and
``Expect: 100-continue`` answered). A request the gateway cannot parse gets a 400 with the JSON error body; a
client that leaves mid-answer is one DEBUG line.
"""

from __future__ import annotations

import io
import json
import logging
import mimetypes
import socket
import ssl
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import unquote

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message

from medsam2.errors import Medsam2Error
from medsam2.gateway import openapi
from medsam2.gateway.body import FRAMED_UPLOAD_TYPE, BodyError, RequestBody, framed_header
from medsam2.gateway.connections import BoundedHTTPServer, Connection, ConnectionLimits
from medsam2.gateway.context import Aborted, HttpCallContext, catalogued, refusal
from medsam2.gateway.ohif import CONTENT_SECURITY_POLICY as OHIF_CONTENT_SECURITY_POLICY
from medsam2.gateway.ohif import OhifSite
from medsam2.gateway.routes import CallDetails, HandlerCollector, Route, Shape, intercepted_lookup, routes_for

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")
UPLOAD_CHUNK_BYTES = 1 << 20
HEADER_FIELD = "x-medsam2-header"
CHUNK_FIELD = "X-Medsam2-Chunk"
# Strict: only this origin's own files; no inline script or style, no eval, no CDN, no framing.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self' blob: data:; worker-src 'self' blob:; font-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_JSON_OPTIONS = {"always_print_fields_with_no_presence": True}
MAX_STATIC_NAME = 255
"""Longest file name under /static/ (longer ones are 404 without touching the file system)."""
LINGER_IDLE_S = 2.0
LINGER_S = 30.0
LINGER_BYTES = 1 << 20
"""After refusing a request whose body is unread, read and drop the rest of it before closing, so that closing
does not reset the connection before the client has read the refusal (a "lingering close", as nginx's
lingering_time and lingering_timeout). A client sends its whole body before it reads an answer, so a body whose
Content-Length was already admitted (its headers passed the token and the size checks) is dropped to its end;
any other at most LINGER_BYTES. Either way for at most LINGER_S, and LINGER_IDLE_S without a byte."""


@runtime_checkable
class HeaderCheck(Protocol):
    """An interceptor that can refuse a call from its method and headers alone, before its body is read."""

    def refusal(self, method: str, metadata: tuple[tuple[str, str], ...]) -> Any:
        """The ``grpc.Status`` (with ``google.rpc`` details) the call is refused with, or None when admitted."""


@dataclass(frozen=True, slots=True)
class GatewayOptions:
    """How the gateway listens and what it accepts."""

    host: str
    port: int
    max_json_bytes: int
    max_upload_bytes: int
    static_dir: Path = STATIC_DIR
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    ohif: OhifSite | None = None
    """OHIF at /ohif/ with its DICOMweb proxy (gateway/ohif.py); None serves no viewer there."""
    cors_origins: frozenset[str] = frozenset()
    """Other origins (a site's own OHIF) allowed to call the API and the proxy from a browser; exact matches."""


class Gateway:
    """The route table, the handlers behind it, and the calls the HTTP layer makes on them."""

    def __init__(
        self,
        services: Iterable[tuple[ServiceDescriptor, Callable[[Any, Any], None], Any]],
        interceptors: Iterable[grpc.ServerInterceptor],
        *,
        title: str,
        version: str,
        comments: dict[str, str] | None = None,
        required: dict[str, tuple[str, ...]] | None = None,
    ) -> None:
        """``services``: (descriptor, generated ``add_*Servicer_to_server``, servicer) for each gRPC service.

        ``comments``: the proto's comments by full name (descriptions in the OpenAPI document); ``required``:
        the fields the server refuses without, by message full name (proto field names).
        """
        services = list(services)
        interceptors = list(interceptors)
        collector = HandlerCollector()
        for _descriptor, add_to_server, servicer in services:
            add_to_server(servicer, collector)
        self.routes = routes_for(d for d, _, _ in services)
        self.lookup = intercepted_lookup(collector, interceptors)
        self.header_checks = [i for i in interceptors if isinstance(i, HeaderCheck)]
        spec = openapi.document(self.routes, title=title, version=version, comments=comments, required=required)
        self.openapi = json.dumps(spec, indent=1, sort_keys=True).encode()

    def refusal(self, route: Route, context: HttpCallContext) -> bool:
        """True (the context holds the status) when an interceptor refuses the call from its headers alone."""
        metadata = context.invocation_metadata()
        for check in self.header_checks:
            status = check.refusal(route.full_method, metadata)
            if status is not None:
                try:
                    context.abort_with_status(status)
                except Aborted:
                    pass
                return True
        return False

    def handler(self, route: Route, metadata: tuple[tuple[str, str], ...]) -> grpc.RpcMethodHandler | None:
        """The method's handler as the interceptors give it for this caller."""
        return self.lookup(CallDetails(route.full_method, metadata))

    def unary(self, route: Route, request: Message, context: HttpCallContext) -> Message | None:
        """Call a unary method; None when it failed (the context holds the status)."""
        handler = self.handler(route, context.invocation_metadata())
        if handler is None:
            context.refuse(_unserved(route))
            return None
        try:
            return handler.unary_unary(request, context)
        except Aborted:
            return None
        finally:
            context.run_callbacks()

    def stream(self, route: Route, request: Message, context: HttpCallContext) -> Generator[Message, None, None]:
        """Call a server-streaming method; it ends early when it fails (the context holds the status)."""
        handler = self.handler(route, context.invocation_metadata())
        if handler is None:
            context.refuse(_unserved(route))
            return
        try:
            yield from handler.unary_stream(request, context)
        except Aborted:
            return
        finally:
            context.run_callbacks()


def _unserved(route: Route) -> Medsam2Error:
    """A route the interceptors give no handler for: no such method here, with the catalogue's details."""
    return catalogued(f"{route.name} is not served here; see /openapi.json", reason="NO_SUCH_METHOD")


def stop_gateway(server: BoundedHTTPServer, timeout_s: float) -> bool:
    """Stop accepting connections, then wait up to ``timeout_s`` for requests in flight; True when none is left.

    An SSE stream counts until its last event is written, so the drain's SERVER_SHUTTING_DOWN reaches the browser.
    """
    server.shutdown()
    server.server_close()
    return server.wait_idle(timeout_s)


def start_gateway(gateway: Gateway, options: GatewayOptions) -> BoundedHTTPServer:
    """Listen on ``options.host:options.port`` (0 picks a free port) in a background thread."""
    handler = type("GatewayRequestHandler", (_RequestHandler,), {"gateway": gateway, "options": options})
    tls = None
    if options.tls_cert is not None and options.tls_key is not None:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.minimum_version = ssl.TLSVersion.TLSv1_2
        tls.load_cert_chain(options.tls_cert, options.tls_key)
        if options.tls_client_ca is not None:
            tls.load_verify_locations(options.tls_client_ca)
            tls.verify_mode = ssl.CERT_REQUIRED
    server: BoundedHTTPServer

    def serve(connection: Connection) -> bool:
        return handler(connection, connection.address, server).keep_open

    server = BoundedHTTPServer((options.host, options.port), serve, options.limits, tls=tls)
    threading.Thread(target=server.serve_forever, name="medsam2-http", daemon=True).start()
    log.info(
        "HTTP gateway and web viewer on %s:%d (%d workers, %d connections at most)",
        options.host,
        server.server_address[1],
        options.limits.workers,
        options.limits.max_connections,
    )
    return server


class _RequestHandler(BaseHTTPRequestHandler):
    gateway: Gateway
    options: GatewayOptions
    protocol_version = "HTTP/1.1"
    timeout = 120  # seconds a request may stall mid-read (idle connections wait in the listener's selector)
    server_version = "medsam2-gateway"
    sys_version = ""
    keep_open = False
    """Set by ``handle``: the connection stays open for another request (it goes back to the listener)."""
    _body_state: RequestBody | None = None
    _expect_continue = False
    _left = False
    requestline = ""

    # -- the connection: requests until the client closes, errors that end it quietly ---------------
    def setup(self) -> None:
        """Read the request head the listener already holds, then the socket."""
        connection: Connection = self.request
        self.connection = connection.sock
        self.connection.settimeout(self.timeout)
        head, connection.head = bytes(connection.head), bytearray()
        self.rfile = io.BufferedReader(_PrefixedSocket(head, self.connection), 1 << 16)
        self.wfile = _SocketWriter(self.connection)

    def handle(self) -> None:
        """Answer this connection's requests; give the worker back once nothing more is buffered."""
        self.keep_open = False
        try:
            while True:
                self._body_state = None
                self._expect_continue = False
                self.handle_one_request()
                if self._body_state is not None and not self._body_state.finished:
                    # The body was refused unread: what follows it is not a request.
                    self.close_connection = True
                if self.close_connection:
                    self._linger()
                    return
                if not self._buffered():
                    self.keep_open = True
                    return
        except (ConnectionError, TimeoutError, ssl.SSLError) as exc:
            self.close_connection = True
            self._departed(exc)
        except Exception:
            self.close_connection = True
            log.exception("HTTP request %r from %s failed", self.requestline[:200], self.client_address[0])

    def _departed(self, exc: BaseException) -> None:
        """A client that leaves (or stalls past the timeout) mid-request or mid-answer: its business, not a fault."""
        if not self._left:
            self._left = True
            log.debug("HTTP client %s left: %s", self.client_address[0], type(exc).__name__)

    def _buffered(self) -> bool:
        """Whether the next request's bytes are already here (pipelined), without waiting for them."""
        reader = self.rfile
        assert isinstance(reader, io.BufferedReader)  # as setup() made it
        try:
            self.connection.setblocking(False)
            return bool(reader.peek(1))
        except (BlockingIOError, ssl.SSLWantReadError):
            return False
        finally:
            self.connection.settimeout(self.timeout)

    def _linger(self) -> None:
        """Let the client read our answer before the socket closes, when its request body was not read."""
        if self._body_state is None or self._body_state.finished:
            return
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(0.2)
            self.connection.settimeout(LINGER_IDLE_S)
            budget = max(LINGER_BYTES, self._body_state.declared_left)
            deadline, dropped = time.monotonic() + LINGER_S, 0
            while dropped < budget and time.monotonic() < deadline:
                chunk = self.connection.recv(1 << 16)
                if not chunk:
                    break
                dropped += len(chunk)
        except OSError:
            pass

    def handle_expect_100(self) -> bool:
        """Answer ``Expect: 100-continue`` only when the body is opened, after auth and the length check."""
        self._expect_continue = True
        return True

    def _open_body(self) -> None:
        if self._expect_continue:
            self._expect_continue = False
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.wfile.flush()

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The HTTP server's own refusals (bad request line, headers too large, ...) with the JSON error body."""
        self.close_connection = True
        reason, field = _ERROR_REASON.get(code, ("MALFORMED_REQUEST", "request"))
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = str(code)
        text = message or phrase
        if self.command is None or self.request_version == "HTTP/0.9":
            self.command, self.request_version = "GET", "HTTP/1.1"
        self._error(code, text, reason=reason, field=field)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def _security_headers(self) -> None:
        # A request refused while its line or headers are read has neither yet: it gets the strict policy, no CORS.
        path = getattr(self, "path", "")
        ohif = path == "/ohif" or path.startswith("/ohif/")
        self.send_header("Content-Security-Policy", OHIF_CONTENT_SECURITY_POLICY if ohif else CONTENT_SECURITY_POLICY)
        headers = getattr(self, "headers", None)
        origin = headers.get("Origin") if headers is not None else None
        if origin and origin in self.options.cors_origins:
            self.send_header("Access-Control-Allow-Origin", origin)
            self.send_header("Vary", "Origin")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        if self.close_connection or (self._body_state is not None and not self._body_state.finished):
            headers = {**(headers or {}), "Connection": "close"}
            self.close_connection = True
        self.send_response(status)
        self._security_headers()
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json", headers)

    def _failed(self, context: HttpCallContext) -> None:
        """The JSON error body of a failed call, with Retry-After when it carries a RetryInfo."""
        status, payload = context.error()
        self._json(status, payload, context.error_headers())

    def _error(self, status: int, message: str, *, reason: str, field: str = "") -> None:
        """One of the gateway's own refusals: HTTP ``status``, and the catalogue's status and details for
        ``reason`` (context.refusal), as the servicer's errors carry them."""
        body, headers = refusal(status, catalogued(message, reason=reason, field=field))
        self._json(status, body, headers)

    def _body_error(self, exc: BodyError) -> None:
        self.close_connection = True
        self._error(exc.http_status, str(exc), reason=exc.reason, field=exc.field)

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        # gRPC metadata keys are lower case; only the bearer token and our own x- headers are passed on.
        return tuple(
            (k.lower(), v)
            for k, v in self.headers.items()
            if k.lower() == "authorization" or (k.lower().startswith("x-") and k.lower() != HEADER_FIELD)
        )

    def _context(self) -> HttpCallContext:
        host, port = self.client_address[:2]
        certificate = self.connection.getpeercert() if isinstance(self.connection, ssl.SSLSocket) else None
        return HttpCallContext(self._metadata(), f"ipv4:{host}:{port}", certificate=certificate or None)

    def _declared_body(self, limit: int) -> RequestBody | None:
        """The body as declared (nothing read yet), or None after a 400/413/501 for its declaration."""
        try:
            self._body_state = RequestBody.declared(self.rfile, self.headers, limit=limit, on_open=self._open_body)
        except BodyError as exc:
            self._mark_unread()
            self._body_error(exc)
            return None
        return self._body_state

    def _declares_body(self) -> bool:
        return bool(self.headers.get("Transfer-Encoding")) or (self.headers.get("Content-Length") or "0").strip() != "0"

    def _mark_unread(self) -> None:
        """Whatever the client sends after these headers is unread (until a reader takes it): answering closes the
        connection, after a lingering close."""
        self._body_state = RequestBody(self.rfile, length=1, chunked=False, limit=0, on_open=self._open_body)

    def _body(self, limit: int) -> bytes | None:
        """The whole body, at most ``limit`` bytes, or None after an error answer."""
        body = self._declared_body(limit)
        if body is None:
            return None
        try:
            return body.read_all()
        except BodyError as exc:
            self._body_error(exc)
            return None

    # -- GET: the page, its files, the OpenAPI document --------------------------------
    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if self._declares_body():
            self._mark_unread()  # a body nobody reads must not be taken for the next request
        if path == "/openapi.json":
            self._send(200, self.gateway.openapi, "application/json")
        elif path == "/healthz":
            self._json(200, {"status": "ok"})
        elif path == "/" or path.startswith("/static/"):
            self._static("index.html" if path == "/" else path.removeprefix("/static/"))
        elif path == "/ohif" or path.startswith("/ohif/"):
            self._ohif(path.removeprefix("/ohif").removeprefix("/"))
        else:
            self._error(404, f"no page at {path[:200]}", reason="NO_SUCH_PATH")

    do_HEAD = do_GET

    def do_OPTIONS(self) -> None:
        """CORS preflight: granted only to the exact origins of --cors-origins."""
        origin = self.headers.get("Origin")
        if not origin or origin not in self.options.cors_origins:
            self._error(
                403,
                "this origin may not call the service (--cors-origins)",
                reason="PERMISSION_DENIED",
            )
            return
        self._send(
            204,
            b"",
            "text/plain",
            {
                "Access-Control-Allow-Methods": "GET, POST",
                "Access-Control-Allow-Headers": f"Authorization, Content-Type, Accept, {HEADER_FIELD}, {CHUNK_FIELD}",
                "Access-Control-Max-Age": "600",
            },
        )

    def _ohif(self, name: str) -> None:
        site = self.options.ohif
        if site is None or not site.built:
            self._error(503, "OHIF is not installed: run scripts/build_web.sh (needs npm)", reason="NOT_BUILT")
            return
        if name.startswith("dicomweb/"):
            query = self.path.split("?", 1)[1] if "?" in self.path else ""
            reply = site.proxy(name.removeprefix("dicomweb/"), query, self.headers, self._context())
            content_type = reply.headers.pop("Content-Type", "application/octet-stream")
            self._send(reply.status, reply.body, content_type, reply.headers)
            return
        found = site.file(name)
        if found is None:
            self._error(404, f"no file {name[:200]} in OHIF", reason="NO_SUCH_PATH")
            return
        self._send(200, *found)

    def _static(self, name: str) -> None:
        root = self.options.static_dir.resolve()
        name = unquote(name, errors="replace")
        target = None
        if len(name) <= MAX_STATIC_NAME and "\0" not in name:
            try:
                target = (root / name).resolve()
                if not target.is_relative_to(root) or not target.is_file():
                    target = None
            except (OSError, ValueError):  # a name the file system refuses (too long a component, ...)
                target = None
        if target is None:
            if name == "index.html":
                self._error(503, "the web viewer is not built: run scripts/build_web.sh", reason="NOT_BUILT")
            else:
                self._error(404, f"no file {name[:200]!r}", reason="NO_SUCH_PATH")
            return
        kind = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if kind.startswith("text/") or kind in ("application/javascript", "application/json"):
            kind += "; charset=utf-8"
        self._send(200, target.read_bytes(), kind)

    # -- POST: the API ------------------------------------------------------------------
    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        if self._declares_body():
            self._mark_unread()  # until the body is opened: every refusal before that closes after a linger
        kind = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if kind not in ("application/json", "application/octet-stream", FRAMED_UPLOAD_TYPE):
            # Browsers send the "simple" types (text/plain, forms) cross-origin without asking first; ours need
            # a CORS preflight, which this origin never grants, so other sites cannot call the API from a browser.
            self.close_connection = True
            self._error(
                415,
                "send Content-Type: application/json (or, for an upload, application/octet-stream with "
                f"X-Medsam2-Header, or {FRAMED_UPLOAD_TYPE} with the header at the start of the body)",
                reason="UNSUPPORTED_MEDIA_TYPE",
                field="Content-Type",
            )
            return
        if path == "/gateway/v1/Measurements":
            self._measurements()
            return
        name = path.removeprefix("/v1/")
        download = name.endswith(":download")
        route = self.gateway.routes.get(name.removesuffix(":download")) if path.startswith("/v1/") else None
        if route is None or route.shape is Shape.UNSUPPORTED or (download and not route.downloadable):
            self.close_connection = True
            self._error(404, f"no method at {path[:200]}; see /openapi.json", reason="NO_SUCH_METHOD")
            return
        if kind != "application/json" and route.shape is not Shape.UPLOAD:
            self.close_connection = True
            self._error(
                415,
                f"{route.name} takes Content-Type: application/json",
                reason="UNSUPPORTED_MEDIA_TYPE",
                field="Content-Type",
            )
            return
        context = self._context()
        if self.gateway.refusal(route, context):  # the token, judged from the headers: no body byte read yet
            self.close_connection = True
            self._failed(context)
            return
        if route.shape is Shape.UPLOAD:
            self._upload(route, kind, context)
            return
        request = self._parse(route)
        if request is None:
            return
        if route.shape is Shape.UNARY:
            response = self.gateway.unary(route, request, context)
            if context.failed() or response is None:
                self._failed(context)
            else:
                self._json(200, json_format.MessageToDict(response, **_JSON_OPTIONS))
        elif download:
            self._download(route, request, context)
        else:
            self._events(route, request, context)

    def _parse(self, route: Route) -> Message | None:
        body = self._body(self.options.max_json_bytes)
        if body is None:
            return None
        request = route.request_class()()
        try:
            json_format.Parse(body or b"{}", request)
        except (json_format.ParseError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            self._error(
                400,
                f"the body is not a valid {route.method.input_type.name}: {str(exc)[:500]}",
                reason="MALFORMED_REQUEST",
                field="body",
            )
            return None
        return request

    def _events(self, route: Route, request: Message, context: HttpCallContext) -> None:
        messages = self.gateway.stream(route, request, context)
        first = next(messages, None)
        if first is None and context.failed():
            self._failed(context)
            return
        # Server-sent events end with the connection: no length is known in advance.
        self.close_connection = True
        self.send_response(200)
        self._security_headers()
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        try:
            if first is not None:
                self._event("message", json_format.MessageToDict(first, **_JSON_OPTIONS))
                for message in messages:
                    self._event("message", json_format.MessageToDict(message, **_JSON_OPTIONS))
            if context.failed():
                self._event("error", context.error()[1])
            else:
                self._event("end", {})
        except (BrokenPipeError, ConnectionResetError) as exc:
            # The browser went away: the servicer sees an inactive context and stops at the next slice.
            self._departed(exc)
            context.cancel()
            messages.close()

    def _event(self, kind: str, payload: dict) -> None:
        prefix = "" if kind == "message" else f"event: {kind}\n"
        self.wfile.write(f"{prefix}data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode())
        self.wfile.flush()

    def _download(self, route: Route, request: Message, context: HttpCallContext) -> None:
        data = bytearray()
        first = None
        for chunk in self.gateway.stream(route, request, context):
            first = first or chunk
            data += chunk.data
        if context.failed():
            self._failed(context)
            return
        header = {}
        if first is not None:
            header = json_format.MessageToDict(first, **_JSON_OPTIONS)
            header.pop("data", None)
        self._send(200, bytes(data), "application/octet-stream", {CHUNK_FIELD: json.dumps(header)})

    def _upload(self, route: Route, kind: str, context: HttpCallContext) -> None:
        """A client-streaming upload: the header (request header, JSON body or framed body), then the data."""
        header_field, data_field = route.upload_fields or ("", "")
        request_class = route.request_class()
        header_class = type(getattr(request_class(), header_field))
        raw = self.headers.get(HEADER_FIELD)
        body_is_header = raw is None and kind == "application/json"
        if raw is None and kind == "application/octet-stream":
            self.close_connection = True
            self._error(
                400,
                f"an upload needs its {header_field} as JSON in the X-Medsam2-Header request header, at the start "
                f"of a {FRAMED_UPLOAD_TYPE} body, or as a JSON body",
                reason="MALFORMED_REQUEST",
                field="X-Medsam2-Header",
            )
            return
        framed = kind == FRAMED_UPLOAD_TYPE
        json_limit = self.options.max_json_bytes
        if body_is_header:
            limit = json_limit
        elif framed:
            limit = self.options.max_upload_bytes + json_limit + 4
        else:
            limit = self.options.max_upload_bytes
        body = self._declared_body(limit)
        if body is None:
            return
        header = header_class()
        try:
            if body_is_header:
                text: bytes | str = body.read_all()
            elif framed:
                text = framed_header(body, json_limit)
            else:
                assert raw is not None  # the octet-stream form without it was refused above
                text = raw if raw.lstrip().startswith("{") else unquote(raw)
            json_format.Parse(text or "{}", header)
        except BodyError as exc:
            self._body_error(exc)
            return
        except (json_format.ParseError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            self.close_connection = True
            self._error(
                400,
                f"the {header_field} is not a valid {header_class.__name__}: {str(exc)[:500]}",
                reason="MALFORMED_REQUEST",
                field="body" if raw is None else "X-Medsam2-Header",
            )
            return
        refused: list[BodyError] = []

        def messages() -> Iterator[Message]:
            yield request_class(**{header_field: header})
            while True:
                try:
                    chunk = body.read(UPLOAD_CHUNK_BYTES)
                except BodyError as exc:
                    # Ending the stream early makes the servicer refuse a short upload; the client is told why.
                    refused.append(exc)
                    return
                except (ConnectionError, TimeoutError, ssl.SSLError) as exc:
                    # The client left mid-upload: the servicer sees a cancelled call, as over gRPC.
                    self.close_connection = True
                    self._departed(exc)
                    context.cancel()
                    return
                if not chunk:
                    return
                yield request_class(**{data_field: chunk})

        handler = self.gateway.handler(route, context.invocation_metadata())
        response = None
        try:
            if handler is None:
                context.refuse(_unserved(route))
            else:
                response = handler.stream_unary(messages(), context)
        except Aborted:
            response = None
        finally:
            context.run_callbacks()
        if self._left:
            return
        if refused:
            self._body_error(refused[0])
        elif context.failed() or response is None:
            self._failed(context)
        else:
            self._json(200, json_format.MessageToDict(response, **_JSON_OPTIONS))

    # -- a convenience the proto does not have ------------------------------------------
    def _measurements(self) -> None:
        """Volume and RECIST per object of a session's result, through GetSession and GetResult (same auth)."""
        from medsam2.gateway.measure import measurements

        context = self._context()
        route = self.gateway.routes.get("GetSession")
        if route is not None and self.gateway.refusal(route, context):
            self.close_connection = True
            self._failed(context)
            return
        body = self._body(self.options.max_json_bytes)
        if body is None:
            return
        try:
            session_id = str(json.loads(body or b"{}").get("sessionId") or "")
        except (ValueError, AttributeError, RecursionError):
            message = "the body must be JSON with a sessionId"
            self._error(400, message, reason="MALFORMED_REQUEST", field="body")
            return
        status, payload = measurements(self.gateway, session_id, context)
        self._json(status, payload, context.error_headers() if status >= 400 else None)


class _PrefixedSocket(io.RawIOBase):
    """A socket's bytes, after the ones the listener read already (a non-blocking read that finds none gives None)."""

    def __init__(self, prefix: bytes, sock: socket.socket) -> None:
        self._prefix = memoryview(prefix)
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int | None:  # noqa: ANN001 - a writable buffer
        if self._prefix:
            n = min(len(buffer), len(self._prefix))
            buffer[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        try:
            return self._sock.recv_into(buffer)
        except (BlockingIOError, ssl.SSLWantReadError):
            return None


class _SocketWriter(io.BufferedIOBase):
    """Unbuffered writes to the socket (each ``write`` is sent whole), as the standard library's handler does."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # noqa: ANN001 - bytes-like
        self._sock.sendall(data)
        return len(data)


_ERROR_REASON = {
    414: ("HEADERS_TOO_LARGE", ""),  # the request line
    431: ("HEADERS_TOO_LARGE", ""),
    501: ("UNSUPPORTED_PROTOCOL", "request"),  # a method without a do_ handler
    505: ("UNSUPPORTED_PROTOCOL", "request"),  # HTTP/2 or later on this HTTP/1.1 server
}
"""Reason and field at fault of the HTTP server's own refusals (``send_error``); the rest (400) are
MALFORMED_REQUEST of the request. The catalogue gives each reason its status (``context.catalogued``)."""
