"""Assemble and run the gRPC server: backend, registry, health, reflection, auth, TLS, metrics, drain."""

from __future__ import annotations

import logging
import re
import signal
import threading
import time
from collections.abc import Mapping
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import message_factory
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status

from medsam2.api.pb.medsam2.v1 import segmentation_pb2 as pb
from medsam2.api.pb.medsam2.v1 import segmentation_pb2_grpc as pb_grpc
from medsam2.engine.backend import StageBackend
from medsam2.engine.tracker import TrackerOptions
from medsam2.errors import BackendUnavailable, ConfigError, Unauthenticated
from medsam2.graphs import MAX_MEMORY_SLOTS
from medsam2.models.provenance import ModelProvenance, read_provenance
from medsam2.pacs.service import PacsStudies
from medsam2.server import audit, limiter, metrics, status
from medsam2.server.annotation_store import AnnotationStore
from medsam2.server.auth import Authenticator, parse_principals, reload_on_sighup
from medsam2.server.config import ServerSettings
from medsam2.server.drain import DRAIN_END_S, Drain
from medsam2.server.durability import Durability
from medsam2.server.pacs_fetches import PacsFetchGuard, PacsFetchLimits
from medsam2.server.servicer import SegmentationServicer
from medsam2.server.sessions import Limits, SessionRegistry
from medsam2.server.uploads import UploadGuard, UploadLimits
from medsam2.server.versions import VersionedBackends

if TYPE_CHECKING:
    from medsam2.gateway.connections import BoundedHTTPServer

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SegmentationService"].full_name
HEALTH_PREFIX = "/grpc.health.v1.Health/"
LIVENESS_SERVICE = "medsam2.liveness"
"""Health service name that is SERVING while the process serves, whatever the backend (the chart's liveness probe)."""


OPS_METHODS = ("GetServerInfo",)
"""SegmentationService methods also served on the health port (when the proto has them)."""


class AuthInterceptor(grpc.ServerInterceptor):
    """Reject calls with a missing or wrong bearer token before they take a worker; health stays open for probes.

    Calls with a verified client certificate (mTLS) and no token pass; ``@rpc`` then names their principal.
    """

    def __init__(self, authenticator: Authenticator) -> None:
        self._auth = authenticator

    def intercept_service(self, continuation, handler_call_details):  # noqa: ANN001, ANN201
        handler = continuation(handler_call_details)
        if (
            handler is None
            or self.refusal(handler_call_details.method, handler_call_details.invocation_metadata) is None
        ):
            return handler
        return _deny_like(handler)

    def refusal(self, method: str, metadata: Any) -> grpc.Status | None:
        """The status a call is refused with, from its method and headers alone (None: admitted).

        The HTTP gateway asks this before it reads a request's body, so an unauthenticated body is never read.
        """
        if method.startswith(HEALTH_PREFIX) or self._auth.admits(metadata):
            return None
        return rpc_status.to_status(
            status.rich_status(grpc.StatusCode.UNAUTHENTICATED, _DENIED, Unauthenticated(_DENIED))
        )


_DENIED = "missing or wrong bearer token"


def _deny_like(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    def deny(request, context):  # noqa: ANN001, ANN202
        status.abort(context, grpc.StatusCode.UNAUTHENTICATED, _DENIED, Unauthenticated(_DENIED))

    make = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(handler.request_streaming, handler.response_streaming)]
    return make(
        deny, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
    )


def make_backend(settings: ServerSettings, threads: int) -> StageBackend:
    """The embedded backend (``--backend``, ``--precision``), or Triton when a URL is set."""
    if settings.triton_url:
        if settings.backend != "onnxruntime" or settings.precision not in ("auto", "fp32"):
            raise ConfigError(
                "--backend and --precision choose the embedded backend; with --triton-url the "
                "precision is the Triton model repository's"
            )
        return _triton_backend(settings)
    if not _given(settings.model_repository):
        raise ConfigError("the embedded backend needs --model-repository (exported graphs); or set --triton-url")
    from medsam2.models.provenance import list_versions
    from medsam2.models.versions import choose_version

    pinned = settings.model_version or None
    # A version that is not there fails the start, naming the versions that are (NotFound: exit code 3).
    choose_version(settings.model_repository, pinned)
    if list_versions(settings.model_repository):
        from medsam2.server.versions import FolderVersions, embedded_loader

        # Numbered versions: load the pinned one or the newest; SIGHUP and SetModelVersion switch, open
        # sessions keep theirs.
        return VersionedBackends(
            FolderVersions(settings.model_repository, embedded_loader(settings.backend, settings.precision, threads)),
            max_concurrent=settings.backend_concurrency or 1,
            version=pinned,
        )
    from medsam2.backends.select import make_embedded_backend

    return make_embedded_backend(
        settings.model_repository, backend=settings.backend, precision=settings.precision, threads=threads
    )


def _triton_backend(settings: ServerSettings) -> StageBackend:
    """Triton's numbered model versions (pinned ensembles in its repository), or its one model as before.

    Triton may come up after the service: the versions are then read once it answers (readiness waits for it).
    """
    from medsam2.backends.triton_backend import TritonBackend
    from medsam2.server.triton_versions import TritonVersions

    pinned = settings.model_version or None
    catalog = TritonVersions(
        settings.triton_url, repository=settings.model_repository if _given(settings.model_repository) else None
    )
    try:
        unversioned = not (catalog.available() or catalog.pinned_in_repository())
    except BackendUnavailable:
        unversioned = False  # not known yet
    if unversioned and pinned is None:
        catalog.close()
        return TritonBackend(settings.triton_url)
    return VersionedBackends(
        catalog, max_concurrent=settings.backend_concurrency, version=pinned, wait_for_catalog=True
    )


def open_durability(settings: ServerSettings) -> Durability | None:
    """The session store's journal, or None for memory:// (sessions live in this replica only, as before)."""
    from medsam2.store import open_store

    store = open_store(settings.session_store)
    if store.url_scheme == "memory":
        return None
    try:
        store.ping()  # fail at start on a wrong URL, password or certificate, not on the first request
    except Exception as exc:
        store.close()
        raise ConfigError(f"--session-store: {exc}") from None
    return Durability(store, ttl_s=settings.session_ttl_s, max_study_bytes=settings.session_store_max_study_bytes)


def pacs_studies(settings: ServerSettings, secrets: Mapping[str, str]) -> PacsStudies | None:
    """The PACS endpoints of ``--pacs-config`` and ``--pacs-endpoint`` (``MEDSAM2_PACS_*``), if any.

    ``secrets`` holds the variables that the file's ``token_env``/``password_env`` name.
    """
    from medsam2.pacs.config import CONFIG_ENV, ENDPOINT_ENV_PATTERN, load_config
    from medsam2.pacs.service import PacsStudies

    path = Path(settings.pacs_config) if _given(settings.pacs_config) else None
    # Endpoints come from the settings alone: an endpoint variable or the file's among the secrets was read into them
    # already (or overridden by a flag). Any other variable, MEDSAM2_PACS_* or not, may be a token_env's secret.
    endpoint = re.compile(ENDPOINT_ENV_PATTERN)
    named = {k: v for k, v in secrets.items() if k != CONFIG_ENV and not endpoint.fullmatch(k)}
    config = load_config(path, {**named, **dict(settings.pacs_endpoints)})
    return PacsStudies(config) if config.endpoints else None


def served_model(settings: ServerSettings) -> ModelProvenance:
    """Provenance of the embedded backend's model (unknown for Triton, whose repository is not local)."""
    if settings.triton_url or not _given(settings.model_repository):
        return ModelProvenance(version=1)
    return read_provenance(settings.model_repository)


@dataclass
class RunningServer:
    """A started server and what it needs to stop cleanly."""

    server: grpc.Server
    port: int
    health: health.HealthServicer
    registry: SessionRegistry
    backend: StageBackend
    stop_event: threading.Event
    http: BoundedHTTPServer | None = None
    """The HTTP gateway, when ``http_port`` is set."""
    ops_server: grpc.Server | None = None
    """Health and GetServerInfo on their own port and threads (None when --health-port is -1)."""
    ops_port: int = 0
    auth: Authenticator | None = None
    uploads: UploadGuard | None = None
    durability: Durability | None = None
    drain: Drain = field(default_factory=Drain)
    """The calls in flight and the shutdown clock, shared with the servicer."""

    @property
    def http_port(self) -> int:
        """The HTTP gateway's port (0: off)."""
        return self.http.server_address[1] if self.http is not None else 0

    def stop(self, grace_s: float, *, end_s: float = DRAIN_END_S) -> None:
        """Drain: NOT_SERVING, no new calls, streams run for ``grace_s`` and then end with SERVER_SHUTTING_DOWN.

        ``end_s`` more seconds are given to calls to end (a stream ends at its next slice) before the server
        stops anyway. Sessions and the backend are closed only when no call runs any more.
        """
        deadline = time.monotonic() + max(grace_s, 0.0) + max(end_s, 0.0)
        self.stop_event.set()
        self.health.enter_graceful_shutdown()
        self.drain.begin(grace_s)
        # gRPC refuses new calls from here and cancels what still runs at the deadline (our streams end first).
        stopped = self.server.stop(max(deadline - time.monotonic(), 0.0))
        idle = True
        if self.http is not None:
            from medsam2.gateway.server import stop_gateway

            idle = stop_gateway(self.http, deadline - time.monotonic())
        idle = self.drain.wait_idle(deadline - time.monotonic()) and idle
        stopped.wait()
        if self.ops_server is not None:
            self.ops_server.stop(0).wait()
        if self.uploads is not None:
            self.uploads.close()
        if idle:
            self.registry.close_all()
            self.backend.close()
        else:
            # Freeing an ONNX Runtime session under a running call aborts the process; the exit frees it instead.
            log.error(
                "%d call(s) still ran %.0f s after the grace period: sessions and the backend are left to the exit",
                self.drain.calls,
                end_s,
            )
        if self.durability is not None:
            self.durability.store.close()
        log.info("drained and stopped")


def start_server(
    settings: ServerSettings,
    backend: StageBackend,
    metrics_server: bool = True,
    environ: Mapping[str, str] | None = None,
) -> RunningServer:
    """Start serving on ``settings.host:settings.port`` (port 0 picks a free one).

    PACS endpoints come from ``settings``; ``environ`` is only where the secrets that the PACS config file names
    by ``token_env``/``password_env`` are looked up.
    """
    instrumented, versions = _instrument(settings, backend)
    registry = SessionRegistry(Limits.from_settings(settings), versions=versions)
    options = tracker_options(settings)
    authenticator = _authenticator(settings)
    audit.configure(Path(settings.audit_log) if _given(settings.audit_log) else None)
    # Checked before a port opens: an unwritable store is a start-up error.
    annotations = AnnotationStore(
        Path(settings.annotations_dir) if _given(settings.annotations_dir) else None,
        max_bytes_per_principal=settings.annotations_max_bytes,
    )
    uploads = UploadGuard(UploadLimits.from_settings(settings), registry)
    interceptors = [AuthInterceptor(authenticator)] if authenticator.tokens_required else []
    durability = open_durability(settings)
    drain = Drain()
    servicer = SegmentationServicer(
        registry,
        instrumented,
        options,
        pacs=pacs_studies(settings, environ or {}),
        model=served_model(settings),
        max_message_bytes=settings.max_message_bytes,
        auth=authenticator,
        uploads=uploads,
        pacs_fetches=PacsFetchGuard(PacsFetchLimits.from_settings(settings)),
        durability=durability,
        annotations=annotations,
        drain=drain,
    )
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    server, port = _grpc_server(settings, servicer, health_servicer, interceptors)
    ops_server, ops_port = _ops_server(settings, servicer, health_servicer)
    if metrics_server and settings.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(settings.metrics_port, addr=settings.host)
    _set_health(health_servicer, health_pb2.HealthCheckResponse.NOT_SERVING)
    health_servicer.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    server.start()
    if ops_server is not None:
        ops_server.start()
    http = _start_gateway(settings, servicer, interceptors, authenticator) if settings.http_port else None
    running = RunningServer(
        server,
        port,
        health_servicer,
        registry,
        instrumented,
        threading.Event(),
        http=http,
        ops_server=ops_server,
        ops_port=ops_port,
        auth=authenticator,
        uploads=uploads,
        durability=durability,
        drain=drain,
    )
    threading.Thread(target=_watch, args=(running,), name="medsam2-watch", daemon=True).start()
    log.info(
        "serving %s on %s:%d (health also on :%d) with the %s backend",
        SERVICE_NAME,
        settings.host,
        port,
        ops_port,
        backend.name,
    )
    return running


def _instrument(settings: ServerSettings, backend: StageBackend) -> tuple[StageBackend, VersionedBackends | None]:
    """The backend the servicer calls (timed and bounded), and the versions when the backend has several."""
    if isinstance(backend, VersionedBackends):
        return backend, backend  # a VersionedBackends instruments each version itself
    concurrency = settings.backend_concurrency or (0 if settings.triton_url else 1)
    return limiter.InstrumentedBackend(backend, max_concurrent=concurrency), None


def tracker_options(settings: ServerSettings) -> TrackerOptions:
    """Every session's tracker options, after checking the memory padding."""
    if not 0 <= settings.memory_slots <= MAX_MEMORY_SLOTS:
        raise ConfigError(f"--memory-slots must be between 0 and {MAX_MEMORY_SLOTS}, got {settings.memory_slots}")
    return TrackerOptions(
        early_stop_absent=settings.early_stop_absent,
        fill_hole_area=settings.fill_hole_area,
        memory_slots=settings.memory_slots,
    )


def _authenticator(settings: ServerSettings) -> Authenticator:
    return Authenticator(
        tokens_file=Path(settings.auth_tokens) if _given(settings.auth_tokens) else None,
        token=settings.auth_token,
        mtls=_given(settings.tls_client_ca),
        admins=parse_principals(settings.admin_principals),
    )


def _grpc_server(
    settings: ServerSettings,
    servicer: SegmentationServicer,
    health_servicer: health.HealthServicer,
    interceptors: list[grpc.ServerInterceptor],
) -> tuple[grpc.Server, int]:
    """The main gRPC server (the service, health, reflection), bound but not started, and its port."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="medsam2-rpc"),
        interceptors=interceptors,
        options=_channel_options(settings),
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs or 4 * settings.workers,
    )
    pb_grpc.add_SegmentationServiceServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    return server, _bind(server, f"{settings.host}:{settings.port}", settings)


def _ops_server(
    settings: ServerSettings, servicer: SegmentationServicer, health_servicer: health.HealthServicer
) -> tuple[grpc.Server | None, int]:
    """Health and GetServerInfo on their own port and threads, bound but not started (None when -1)."""
    if settings.health_port < 0:
        return None, 0
    ops_server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="medsam2-ops"),
        options=_channel_options(settings),
        maximum_concurrent_rpcs=16,
    )
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, ops_server)
    ops_server.add_generic_rpc_handlers(_ops_handlers(servicer))
    wanted = settings.health_port or (settings.port + 1 if settings.port else 0)
    return ops_server, _bind(ops_server, f"{settings.host}:{wanted}", settings)


def _start_gateway(
    settings: ServerSettings,
    servicer: SegmentationServicer,
    interceptors: list[grpc.ServerInterceptor],
    authenticator: Authenticator,
) -> BoundedHTTPServer:
    """The HTTP gateway on the same servicer and interceptors (so the same auth, audit and metrics), and OHIF."""
    from medsam2.gateway.connections import ConnectionLimits
    from medsam2.gateway.ohif import OhifSite, parse_origins
    from medsam2.gateway.proto_comments import shipped_comments
    from medsam2.gateway.server import Gateway, GatewayOptions, start_gateway
    from medsam2.server.request_checks import REQUIRED_FIELDS

    origins = parse_origins(settings.cors_origins)
    ohif = OhifSite(
        servicer.pacs.config if servicer.pacs is not None else None,
        authenticator.principal_of,
        max_response_bytes=settings.ohif_max_response_bytes,
    )

    gateway = Gateway(
        [
            (
                pb.DESCRIPTOR.services_by_name["SegmentationService"],
                pb_grpc.add_SegmentationServiceServicer_to_server,
                servicer,
            )
        ],
        interceptors,
        title="MedSAM2 session service",
        version="v1",
        comments=shipped_comments(),
        required=REQUIRED_FIELDS,
    )
    tls = _given(settings.tls_cert)
    try:
        return start_gateway(
            gateway,
            GatewayOptions(
                host=settings.host,
                port=settings.http_port,
                max_json_bytes=settings.max_message_bytes,
                max_upload_bytes=settings.max_study_voxels * 8,
                tls_cert=settings.tls_cert if tls else None,
                tls_key=settings.tls_key if tls else None,
                tls_client_ca=settings.tls_client_ca if tls and _given(settings.tls_client_ca) else None,
                limits=ConnectionLimits(
                    workers=settings.http_workers,
                    queued=settings.http_workers,
                    max_connections=settings.http_max_connections,
                ),
                ohif=ohif,
                cors_origins=origins,
            ),
        )
    except OSError as exc:
        raise ConfigError(f"cannot serve HTTP on {settings.host}:{settings.http_port} (--http-port): {exc}") from None


def _bind(server: grpc.Server, address: str, settings: ServerSettings) -> int:
    return (
        server.add_secure_port(address, _credentials(settings))
        if _given(settings.tls_cert)
        else server.add_insecure_port(address)
    )


def _channel_options(settings: ServerSettings) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        # Find dead peers (a client that vanished mid-stream holds a worker until then).
        ("grpc.keepalive_time_ms", int(settings.keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(settings.keepalive_timeout_s * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        # Let clients keep idle connections alive with pings every 10 s or more, without being cut off.
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def _ops_handlers(servicer: SegmentationServicer) -> tuple[grpc.GenericRpcHandler, ...]:
    """The unary ``OPS_METHODS`` of the servicer as handlers for the health port."""
    service = pb.DESCRIPTOR.services_by_name["SegmentationService"]
    handlers = {}
    for name in OPS_METHODS:
        method = service.methods_by_name.get(name)
        if method is None or method.client_streaming or method.server_streaming:
            continue
        request_type = message_factory.GetMessageClass(method.input_type)
        handlers[name] = grpc.unary_unary_rpc_method_handler(
            getattr(servicer, name),
            request_deserializer=request_type.FromString,
            response_serializer=lambda message: message.SerializeToString(),
        )
    return (grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),) if handlers else ()


def _credentials(settings: ServerSettings) -> grpc.ServerCredentials:
    key = Path(settings.tls_key)
    if not key.is_file() or not Path(settings.tls_cert).is_file():
        raise ConfigError(
            f"TLS needs both --tls-cert and --tls-key files (got {settings.tls_cert}, {settings.tls_key})"
        )
    pair = [(key.read_bytes(), Path(settings.tls_cert).read_bytes())]
    if _given(settings.tls_client_ca):
        return grpc.ssl_server_credentials(
            pair, root_certificates=Path(settings.tls_client_ca).read_bytes(), require_client_auth=True
        )
    return grpc.ssl_server_credentials(pair)


def _given(path: Path) -> bool:
    # An unset path setting defaults to Path(""), which Python spells ".".
    return str(path) not in ("", ".")


def _set_health(servicer: health.HealthServicer, status: int) -> None:
    for name in ("", SERVICE_NAME):
        servicer.set(name, status)


def _watch(running: RunningServer, interval_s: float = 2.0) -> None:
    """Health follows the backend's readiness; idle sessions expire."""
    serving = None
    while not running.stop_event.is_set():
        ready = _ready(running.backend)
        metrics.BACKEND_READY.labels(backend=running.backend.name).set(1 if ready else 0)
        if ready != serving:
            _set_health(
                running.health,
                health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING,
            )
            log.info("backend %s is %s", running.backend.name, "ready" if ready else "NOT ready")
            serving = ready
        running.registry.sweep()
        running.stop_event.wait(interval_s)


def _ready(backend: StageBackend) -> bool:
    try:
        return backend.is_ready()
    except Exception:
        return False


def _switch_version(versions: VersionedBackends) -> None:
    """SIGHUP: serve the repository's newest version to new sessions (in a thread: loading takes a while)."""

    def switch() -> None:
        try:
            versions.switch(by="SIGHUP")
        except Exception:
            log.exception("could not switch the model version; still serving version %s", versions.current_version)

    threading.Thread(target=switch, name="medsam2-version-switch", daemon=True).start()


def serve_forever(settings: ServerSettings, backend: StageBackend, environ: Mapping[str, str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT, then drain."""
    running = start_server(settings, backend, environ=environ)
    stopping = threading.Event()

    def on_signal(signum, frame):  # noqa: ANN001, ANN202
        log.info("signal %d: draining for up to %.0f s", signum, settings.grace_s)
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # SIGHUP reloads the tokens file and, with numbered model versions, serves the newest to new sessions.
    versions = backend if isinstance(backend, VersionedBackends) else None
    reload_on_sighup(running.auth, also=(lambda: _switch_version(versions)) if versions is not None else None)
    print(
        f"medsam2 serve: listening on {settings.host}:{running.port} (metrics on :{settings.metrics_port})", flush=True
    )
    if running.http is not None:
        scheme = "https" if _given(settings.tls_cert) else "http"
        print(f"medsam2 serve: web viewer at {scheme}://{settings.host}:{running.http_port}/", flush=True)
        print(f"medsam2 serve: OHIF at {scheme}://{settings.host}:{running.http_port}/ohif/", flush=True)
    stopping.wait()
    running.stop(settings.grace_s, end_s=settings.drain_end_s)
    return 0
