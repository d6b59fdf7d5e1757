"""The HTTP gateway: REST/JSON over the same servicer objects (and interceptors) as the gRPC server, plus the viewer.

Why the standard library's ``ThreadingHTTPServer``: the servicer is synchronous and already thread-safe (it runs
on gRPC's thread pool), so a thread per HTTP request matches it exactly; server-sent events and streamed uploads
need nothing more than a socket; and no new runtime dependency (or an ASGI stack beside gRPC's own threads) has
to be kept patched in a medical service. The gateway binds the same host as the gRPC server and serves TLS with
the same certificate when it is configured.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import ssl
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message

from medsam2.gateway import openapi
from medsam2.gateway.context import Aborted, HttpCallContext
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
    ) -> None:
        """``services``: (descriptor, generated ``add_*Servicer_to_server``, servicer) for each gRPC service."""
        services = list(services)
        collector = HandlerCollector()
        for _descriptor, add_to_server, servicer in services:
            add_to_server(servicer, collector)
        self.routes = routes_for(d for d, _, _ in services)
        self.lookup = intercepted_lookup(collector, interceptors)
        self.openapi = json.dumps(openapi.document(self.routes, title=title, version=version), indent=1).encode()

    def handler(self, route: Route, metadata: tuple[tuple[str, str], ...]) -> grpc.RpcMethodHandler | None:
        """The method's handler as the interceptors give it for this caller."""
        return self.lookup(CallDetails(route.full_method, metadata))

    def unary(self, route: Route, request: Message, context: HttpCallContext) -> Message | None:
        """Call a unary method; None when it failed (the context holds the status)."""
        handler = self.handler(route, context.invocation_metadata())
        if handler is None:
            context.set_code(grpc.StatusCode.UNIMPLEMENTED)
            context.set_details(f"{route.name} is not served here")
            return None
        try:
            return handler.unary_unary(request, context)
        except Aborted:
            return None
        finally:
            context.run_callbacks()

    def stream(self, route: Route, request: Message, context: HttpCallContext) -> Iterator[Message]:
        """Call a server-streaming method; it ends early when it fails (the context holds the status)."""
        handler = self.handler(route, context.invocation_metadata())
        if handler is None:
            context.set_code(grpc.StatusCode.UNIMPLEMENTED)
            context.set_details(f"{route.name} is not served here")
            return
        try:
            yield from handler.unary_stream(request, context)
        except Aborted:
            return
        finally:
            context.run_callbacks()


def start_gateway(gateway: Gateway, options: GatewayOptions) -> ThreadingHTTPServer:
    """Listen on ``options.host:options.port`` (0 picks a free port) in a background thread."""
    handler = type("GatewayRequestHandler", (_RequestHandler,), {"gateway": gateway, "options": options})
    server = _Server((options.host, options.port), handler)
    if options.tls_cert is not None and options.tls_key is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(options.tls_cert, options.tls_key)
        if options.tls_client_ca is not None:
            context.load_verify_locations(options.tls_client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
        server.tls = context
    threading.Thread(target=server.serve_forever, name="medsam2-http", daemon=True).start()
    log.info("HTTP gateway and web viewer on %s:%d", options.host, server.server_address[1])
    return server


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Requests in flight do not keep the process alive at shutdown; the registry closes their sessions.
    block_on_close = False
    tls: ssl.SSLContext | None = None

    def finish_request(self, request, client_address) -> None:  # noqa: ANN001
        # The TLS handshake runs in the connection's own thread: a slow client never stalls accept().
        if self.tls is not None:
            request.settimeout(30)
            try:
                request = self.tls.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                log.info("TLS handshake with %s failed: %s", client_address[0], exc)
                return
        super().finish_request(request, client_address)


class _RequestHandler(BaseHTTPRequestHandler):
    gateway: Gateway
    options: GatewayOptions
    protocol_version = "HTTP/1.1"
    timeout = 120  # seconds a connection may sit idle (or a client may stall an upload)
    server_version = "medsam2-gateway"
    sys_version = ""

    # -- plumbing ---------------------------------------------------------------------
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def _security_headers(self) -> None:
        ohif = self.path == "/ohif" or self.path.startswith("/ohif/")
        self.send_header("Content-Security-Policy", OHIF_CONTENT_SECURITY_POLICY if ohif else CONTENT_SECURITY_POLICY)
        origin = self.headers.get("Origin")
        if origin and origin in self.options.cors_origins:
            self.send_header("Access-Control-Allow-Origin", origin)
            self.send_header("Vary", "Origin")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
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

    def _json(self, status: int, payload: Any) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json")

    def _error(self, status: int, grpc_status: str, message: str) -> None:
        self._json(status, {"error": {"code": status, "status": grpc_status, "message": message}})

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

    def _body(self, limit: int) -> bytes | None:
        length = self.headers.get("Content-Length")
        if length is None:
            if self.headers.get("Transfer-Encoding"):
                self.close_connection = True
                self._error(411, "INVALID_ARGUMENT", "send a Content-Length (chunked bodies are not accepted)")
                return None
            return b""
        if not length.isdigit() or int(length) > limit:
            self.close_connection = True
            self._error(413, "RESOURCE_EXHAUSTED", f"the body is larger than {limit} bytes")
            return None
        return self.rfile.read(int(length))

    # -- GET: the page, its files, the OpenAPI document --------------------------------
    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/openapi.json":
            self._send(200, self.gateway.openapi, "application/json")
        elif path == "/healthz":
            self._json(200, {"status": "ok"})
        elif path == "/" or path.startswith("/static/"):
            self._static("index.html" if path == "/" else path.removeprefix("/static/"))
        elif path == "/ohif" or path.startswith("/ohif/"):
            self._ohif(path.removeprefix("/ohif").removeprefix("/"))
        else:
            self._error(404, "NOT_FOUND", f"no page at {path}")

    do_HEAD = do_GET

    def do_OPTIONS(self) -> None:
        """CORS preflight: granted only to the exact origins of --cors-origins."""
        origin = self.headers.get("Origin")
        if not origin or origin not in self.options.cors_origins:
            self._error(403, "PERMISSION_DENIED", "this origin may not call the service (--cors-origins)")
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
            self._error(503, "UNAVAILABLE", "OHIF is not installed: run scripts/build_web.sh (needs npm)")
            return
        if name.startswith("dicomweb/"):
            query = self.path.split("?", 1)[1] if "?" in self.path else ""
            reply = site.proxy(name.removeprefix("dicomweb/"), query, self.headers, self._context())
            content_type = reply.headers.pop("Content-Type", "application/octet-stream")
            self._send(reply.status, reply.body, content_type, reply.headers)
            return
        found = site.file(name)
        if found is None:
            self._error(404, "NOT_FOUND", f"no file {name} in OHIF")
            return
        self._send(200, *found)

    def _static(self, name: str) -> None:
        root = self.options.static_dir.resolve()
        target = (root / unquote(name)).resolve()
        if not target.is_relative_to(root) or not target.is_file():
            if name == "index.html":
                self._error(503, "UNAVAILABLE", "the web viewer is not built: run scripts/build_web.sh")
            else:
                self._error(404, "NOT_FOUND", f"no file {name}")
            return
        kind = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if kind.startswith("text/") or kind in ("application/javascript", "application/json"):
            kind += "; charset=utf-8"
        self._send(200, target.read_bytes(), kind)

    # -- POST: the API ------------------------------------------------------------------
    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        kind = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if kind not in ("application/json", "application/octet-stream"):
            # Browsers send the "simple" types (text/plain, forms) cross-origin without asking first; ours need
            # a CORS preflight, which this origin never grants, so other sites cannot call the API from a browser.
            self.close_connection = True
            self._error(
                415,
                "INVALID_ARGUMENT",
                "send Content-Type: application/json (or application/octet-stream with X-Medsam2-Header for an upload)",
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
            self._error(404, "UNIMPLEMENTED", f"no method at {path}; see /openapi.json")
            return
        if route.shape is Shape.UPLOAD:
            self._upload(route)
            return
        request = self._parse(route)
        if request is None:
            return
        if route.shape is Shape.UNARY:
            context = self._context()
            response = self.gateway.unary(route, request, context)
            if context.failed() or response is None:
                self._json(*context.error())
            else:
                self._json(200, json_format.MessageToDict(response, **_JSON_OPTIONS))
        elif download:
            self._download(route, request)
        else:
            self._events(route, request)

    def _parse(self, route: Route) -> Message | None:
        body = self._body(self.options.max_json_bytes)
        if body is None:
            return None
        request = route.request_class()()
        try:
            json_format.Parse(body or b"{}", request)
        except json_format.ParseError as exc:
            self._error(400, "INVALID_ARGUMENT", f"the body is not a valid {route.method.input_type.name}: {exc}")
            return None
        return request

    def _events(self, route: Route, request: Message) -> None:
        context = self._context()
        messages = self.gateway.stream(route, request, context)
        first = next(messages, None)
        if first is None and context.failed():
            self._json(*context.error())
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
        except (BrokenPipeError, ConnectionResetError):
            # The browser went away: the servicer sees an inactive context and stops at the next slice.
            context.cancel()
            messages.close()

    def _event(self, kind: str, payload: dict) -> None:
        prefix = "" if kind == "message" else f"event: {kind}\n"
        self.wfile.write(f"{prefix}data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode())
        self.wfile.flush()

    def _download(self, route: Route, request: Message) -> None:
        context = self._context()
        data = bytearray()
        first = None
        for chunk in self.gateway.stream(route, request, context):
            first = first or chunk
            data += chunk.data
        if context.failed():
            self._json(*context.error())
            return
        header = {}
        if first is not None:
            header = json_format.MessageToDict(first, **_JSON_OPTIONS)
            header.pop("data", None)
        self._send(200, bytes(data), "application/octet-stream", {CHUNK_FIELD: json.dumps(header)})

    def _upload(self, route: Route) -> None:
        header_field, data_field = route.upload_fields or ("", "")
        request_class = route.request_class()
        header_class = type(getattr(request_class(), header_field))
        raw = self.headers.get(HEADER_FIELD)
        body_is_header = raw is None and (self.headers.get("Content-Type") or "").startswith("application/json")
        if raw is None and not body_is_header:
            self.close_connection = True
            self._error(
                400,
                "INVALID_ARGUMENT",
                f"an upload needs its {header_field} as JSON in the "
                "X-Medsam2-Header request header (or as a JSON body)",
            )
            return
        length = self.headers.get("Content-Length") or "0"
        limit = self.options.max_json_bytes if body_is_header else self.options.max_upload_bytes
        if not length.isdigit() or int(length) > limit:
            self.close_connection = True
            self._error(413, "RESOURCE_EXHAUSTED", f"the upload is larger than {limit} bytes")
            return
        remaining = int(length)
        header = header_class()
        try:
            if body_is_header:
                text = self.rfile.read(remaining)
                remaining = 0
            else:
                text = raw if raw.lstrip().startswith("{") else unquote(raw)
            json_format.Parse(text or "{}", header)
        except json_format.ParseError as exc:
            self.close_connection = True
            self._error(400, "INVALID_ARGUMENT", f"the {header_field} is not a valid {header_class.__name__}: {exc}")
            return

        def messages() -> Iterator[Message]:
            nonlocal remaining
            yield request_class(**{header_field: header})
            while remaining > 0:
                chunk = self.rfile.read(min(UPLOAD_CHUNK_BYTES, remaining))
                if not chunk:
                    break
                remaining -= len(chunk)
                yield request_class(**{data_field: chunk})

        context = self._context()
        handler = self.gateway.handler(route, context.invocation_metadata())
        response = None
        try:
            if handler is None:
                context.set_code(grpc.StatusCode.UNIMPLEMENTED)
                context.set_details(f"{route.name} is not served here")
            else:
                response = handler.stream_unary(messages(), context)
        except Aborted:
            response = None
        finally:
            context.run_callbacks()
        if remaining:
            # The servicer stopped reading (a refusal): the rest of the body would be read as the next request.
            self.close_connection = True
        if context.failed() or response is None:
            self._json(*context.error())
        else:
            self._json(200, json_format.MessageToDict(response, **_JSON_OPTIONS))

    # -- a convenience the proto does not have ------------------------------------------
    def _measurements(self) -> None:
        """Volume and RECIST per object of a session's result, through GetSession and GetResult (same auth)."""
        from medsam2.gateway.measure import measurements

        body = self._body(self.options.max_json_bytes)
        if body is None:
            return
        try:
            session_id = str(json.loads(body or b"{}").get("sessionId") or "")
        except (ValueError, AttributeError):
            self._error(400, "INVALID_ARGUMENT", "the body must be JSON with a sessionId")
            return
        context = self._context()
        status, payload = measurements(self.gateway, session_id, context)
        self._json(status, payload)
