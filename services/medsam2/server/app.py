"""Assemble and run the gRPC server: backend, registry, health, reflection, auth, TLS, metrics, drain."""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from medsam2.api.pb.medsam2.v1 import segmentation_pb2 as pb
from medsam2.api.pb.medsam2.v1 import segmentation_pb2_grpc as pb_grpc
from medsam2.engine.backend import StageBackend
from medsam2.engine.tracker import TrackerOptions
from medsam2.errors import ConfigError
from medsam2.server import metrics
from medsam2.server.config import ServerSettings
from medsam2.server.servicer import SegmentationServicer
from medsam2.server.sessions import Limits, SessionRegistry
from medsam2.server.versions import VersionedBackends

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SegmentationService"].full_name
HEALTH_PREFIX = "/grpc.health.v1.Health/"


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Reject calls without ``authorization: Bearer <token>``; health checks stay open for probes."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}"

    def intercept_service(self, continuation, handler_call_details):  # noqa: ANN001, ANN201
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(HEALTH_PREFIX):
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        if metadata.get("authorization") == self._expected:
            return handler
        return _deny_like(handler)


def _deny_like(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    def deny(request, context):  # noqa: ANN001, ANN202
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

    make = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(handler.request_streaming, handler.response_streaming)]
    return make(deny, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)


def make_backend(settings: ServerSettings, threads: int) -> StageBackend:
    """The embedded ONNX Runtime backend, or Triton when a URL is set."""
    if settings.triton_url:
        from medsam2.backends.triton_backend import TritonBackend

        return TritonBackend(settings.triton_url)
    if not _given(settings.model_repository):
        raise ConfigError("the embedded backend needs --model-repository (exported graphs); or set --triton-url")
    from medsam2.models.provenance import list_versions

    if list_versions(settings.model_repository):
        from medsam2.server.versions import onnxruntime_loader

        # Numbered versions: load the newest; SIGHUP switches, open sessions keep theirs.
        return VersionedBackends(settings.model_repository, onnxruntime_loader(threads),
                                 max_concurrent=settings.backend_concurrency or 1)
    from medsam2.backends.onnxruntime_backend import OnnxRuntimeBackend

    return OnnxRuntimeBackend(settings.model_repository, threads=threads)


def pacs_fetcher():  # noqa: ANN201 - a StudyFetcher or None
    """Fetch studies named in CreateSession from the PACS endpoints configured in the environment, if any."""
    from medsam2.pacs.config import load_config
    from medsam2.pacs.transfer import fetch_series

    config = load_config()
    if not config.endpoints:
        return None

    def fetch(reference: pb.PacsReference):  # noqa: ANN202
        volume = fetch_series(config.get(reference.endpoint), reference.study_uid, reference.series_uid)
        return volume.voxels, volume.spacing

    return fetch


@dataclass
class RunningServer:
    """A started server and what it needs to stop cleanly."""

    server: grpc.Server
    port: int
    health: health.HealthServicer
    registry: SessionRegistry
    backend: metrics.InstrumentedBackend
    stop_event: threading.Event

    def stop(self, grace_s: float) -> None:
        """Report NOT_SERVING, drain streams in flight for up to ``grace_s``, then close everything."""
        self.stop_event.set()
        self.health.enter_graceful_shutdown()
        self.server.stop(grace_s).wait()
        self.registry.close_all()
        self.backend.close()


def start_server(settings: ServerSettings, backend: StageBackend, metrics_server: bool = True) -> RunningServer:
    """Start serving on ``settings.host:settings.port`` (port 0 picks a free one)."""
    concurrency = settings.backend_concurrency or (0 if settings.triton_url else 1)
    versions = backend if isinstance(backend, VersionedBackends) else None
    # A VersionedBackends instruments each version itself.
    instrumented = backend if versions is not None else metrics.InstrumentedBackend(backend, max_concurrent=concurrency)
    registry = SessionRegistry(Limits(settings.max_sessions, settings.max_study_voxels, settings.max_state_bytes,
                                      settings.session_ttl_s), versions=versions)
    options = TrackerOptions(early_stop_absent=settings.early_stop_absent, fill_hole_area=settings.fill_hole_area)
    interceptors = [BearerTokenInterceptor(settings.auth_token)] if settings.auth_token else []
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="medsam2-rpc"),
        interceptors=interceptors,
        options=[("grpc.max_receive_message_length", settings.max_message_bytes),
                 ("grpc.max_send_message_length", settings.max_message_bytes)],
    )
    servicer = SegmentationServicer(registry, instrumented, options, fetch_study=pacs_fetcher())
    pb_grpc.add_SegmentationServiceServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    address = f"{settings.host}:{settings.port}"
    port = server.add_secure_port(address, _credentials(settings)) if _given(settings.tls_cert) \
        else server.add_insecure_port(address)
    if metrics_server and settings.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(settings.metrics_port, addr=settings.host)
    stop_event = threading.Event()
    _set_health(health_servicer, health_pb2.HealthCheckResponse.NOT_SERVING)
    server.start()
    running = RunningServer(server, port, health_servicer, registry, instrumented, stop_event)
    threading.Thread(target=_watch, args=(running,), name="medsam2-watch", daemon=True).start()
    log.info("serving %s on %s:%d with the %s backend", SERVICE_NAME, settings.host, port, backend.name)
    return running


def _credentials(settings: ServerSettings) -> grpc.ServerCredentials:
    key = Path(settings.tls_key)
    if not key.is_file() or not Path(settings.tls_cert).is_file():
        raise ConfigError(f"TLS needs both --tls-cert and --tls-key files (got {settings.tls_cert}, {settings.tls_key})")
    pair = [(key.read_bytes(), Path(settings.tls_cert).read_bytes())]
    if _given(settings.tls_client_ca):
        return grpc.ssl_server_credentials(pair, root_certificates=Path(settings.tls_client_ca).read_bytes(),
                                           require_client_auth=True)
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
            _set_health(running.health, health_pb2.HealthCheckResponse.SERVING if ready
                        else health_pb2.HealthCheckResponse.NOT_SERVING)
            log.info("backend %s is %s", running.backend.name, "ready" if ready else "NOT ready")
            serving = ready
        running.registry.sweep()
        running.stop_event.wait(interval_s)


def _ready(backend: metrics.InstrumentedBackend) -> bool:
    try:
        return backend.is_ready()
    except Exception:  # noqa: BLE001 - an unreachable backend is simply not ready
        return False


def _switch_version(versions: VersionedBackends) -> None:
    """SIGHUP: serve the repository's newest version to new sessions (in a thread: loading takes a while)."""
    def switch() -> None:
        try:
            versions.switch()
        except Exception:  # noqa: BLE001 - a bad new version must not stop the server; the old one stays
            log.exception("could not switch the model version; still serving version %s", versions.current_version)

    threading.Thread(target=switch, name="medsam2-version-switch", daemon=True).start()


def serve_forever(settings: ServerSettings, backend: StageBackend) -> int:
    """Serve until SIGTERM/SIGINT, then drain."""
    running = start_server(settings, backend)
    stopping = threading.Event()

    def on_signal(signum, frame):  # noqa: ANN001, ANN202
        log.info("signal %d: draining for up to %.0f s", signum, settings.grace_s)
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if isinstance(backend, VersionedBackends):
        signal.signal(signal.SIGHUP, lambda signum, frame: _switch_version(backend))
    print(f"medsam2 serve: listening on {settings.host}:{running.port} (metrics on :{settings.metrics_port})",
          flush=True)
    stopping.wait()
    running.stop(settings.grace_s)
    return 0
