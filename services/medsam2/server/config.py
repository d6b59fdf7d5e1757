"""Settings of ``medsam2 serve``: flags and MEDSAM2_* environment variables, shown by ``--help``."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Self

from medsam2.pacs.config import CONFIG_ENV, ENDPOINT_ENV_PATTERN, ENDPOINT_ENV_PREFIX
from medsam2.server.drain import DRAIN_END_S
from medsam2.settings import backend_setting, precision_setting, prefixed_setting, setting

GRPC_PORT = 50051
METRICS_PORT = 9464


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """Everything the session service needs to start."""

    host: str = setting("127.0.0.1", "MEDSAM2_HOST", "address to listen on (0.0.0.0 in containers)")
    port: int = setting(GRPC_PORT, "MEDSAM2_PORT", "gRPC port")
    metrics_port: int = setting(METRICS_PORT, "MEDSAM2_METRICS_PORT", "Prometheus /metrics port (0: off)")
    http_port: int = setting(0, "MEDSAM2_HTTP_PORT", "HTTP gateway (REST/JSON, OpenAPI) and web viewer port (0: off)")
    http_workers: int = setting(
        32,
        "MEDSAM2_HTTP_WORKERS",
        "HTTP requests served at once (an event stream holds one); as many more may queue, beyond that 503",
    )
    http_max_connections: int = setting(
        4096,
        "MEDSAM2_HTTP_MAX_CONNECTIONS",
        "open HTTP connections at most, idle ones included (they cost no thread); more get 503",
    )
    cors_origins: str = setting(
        "",
        "MEDSAM2_CORS_ORIGINS",
        "origins (scheme://host[:port], comma-separated, exact) whose pages may call the HTTP API, e.g. a site's own "
        "OHIF (empty: none)",
    )
    ohif_max_response_bytes: int = setting(
        256 * 2**20,
        "MEDSAM2_OHIF_MAX_RESPONSE_BYTES",
        "largest PACS answer the /ohif/ DICOMweb proxy passes on (a series' metadata, a multi-frame object)",
    )
    model_repository: Path = setting(
        Path(""),
        "MEDSAM2_MODEL_REPOSITORY",
        "exported graphs (a model repository or <stage>.onnx folder) for the embedded backend",
    )
    triton_url: str = setting("", "MEDSAM2_TRITON_URL", "Triton gRPC HOST:PORT; empty runs the embedded ONNX Runtime")
    max_sessions: int = setting(16, "MEDSAM2_MAX_SESSIONS", "open sessions at most; idle ones are evicted LRU")
    max_study_voxels: int = setting(512 * 512 * 1024, "MEDSAM2_MAX_STUDY_VOXELS", "voxels per study at most")
    max_state_bytes: int = setting(8 * 2**30, "MEDSAM2_MAX_STATE_BYTES", "memory for all sessions at most")
    session_ttl_s: float = setting(1800.0, "MEDSAM2_SESSION_TTL_S", "idle seconds before a session expires")
    session_store: str = setting(
        "memory://",
        "MEDSAM2_SESSION_STORE",
        "where sessions' studies and journals live: memory:// (this replica only) or redis[s]://[user:pass@]host:port/db"
        " (any replica rebuilds a session after a loss)",
    )
    session_store_max_study_bytes: int = setting(
        512 * 2**20,
        "MEDSAM2_SESSION_STORE_MAX_STUDY_BYTES",
        "largest compressed upload kept in the session store; a larger study's session is not durable",
    )
    backend_concurrency: int = setting(
        0,
        "MEDSAM2_BACKEND_CONCURRENCY",
        "backend calls in flight at once (0: 1 for the embedded backend, unbounded for Triton)",
    )
    workers: int = setting(16, "MEDSAM2_WORKERS", "gRPC worker threads (concurrent requests)")
    max_message_bytes: int = setting(64 * 2**20, "MEDSAM2_MAX_MESSAGE_BYTES", "largest gRPC message")
    grace_s: float = setting(30.0, "MEDSAM2_GRACE_S", "seconds to drain streams in flight at shutdown")
    drain_end_s: float = setting(
        DRAIN_END_S,
        "MEDSAM2_DRAIN_END_S",
        "seconds after the grace period for streams to end with SERVER_SHUTTING_DOWN (at their next slice) "
        "before the server stops anyway",
    )
    tls_cert: Path = setting(Path(""), "MEDSAM2_TLS_CERT", "server certificate (PEM); enables TLS")
    tls_key: Path = setting(Path(""), "MEDSAM2_TLS_KEY", "server private key (PEM)")
    tls_client_ca: Path = setting(Path(""), "MEDSAM2_TLS_CLIENT_CA", "CA of client certificates (PEM); enables mTLS")
    auth_token: str = setting("", "MEDSAM2_AUTH_TOKEN", "bearer token required on every call but health (empty: none)")
    early_stop_absent: int = setting(0, "MEDSAM2_EARLY_STOP", "stop after K slices without the object (0: never)")
    fill_hole_area: int = setting(8, "MEDSAM2_FILL_HOLE_AREA", "fill mask holes up to this area (0: off)")
    memory_slots: int = setting(
        0,
        "MEDSAM2_MEMORY_SLOTS",
        "pad memory banks to this many slots so Triton batches sessions together (0: no padding, best on a CPU)",
    )
    backend: str = backend_setting()
    precision: str = precision_setting()
    # Tenancy and hostile clients (see server/auth.py, sessions.py, uploads.py, audit.py).
    auth_tokens: Path = setting(
        Path(""), "MEDSAM2_AUTH_TOKENS_FILE", "file of 'principal:token' lines, reloaded on SIGHUP (empty: none)"
    )
    audit_log: Path = setting(
        Path(""),
        "MEDSAM2_AUDIT_LOG",
        "append the audit log (JSON lines) to this file (empty: the 'medsam2.audit' logger)",
    )
    annotations_dir: Path = setting(
        Path(""),
        "MEDSAM2_ANNOTATIONS_DIR",
        "SaveAnnotation writes training cases here, a folder per principal (empty: SaveAnnotation is refused)",
    )
    annotations_max_bytes: int = setting(
        20 * 2**30, "MEDSAM2_ANNOTATIONS_MAX_BYTES", "a principal's annotation folder takes no more cases past this"
    )
    max_sessions_per_principal: int = setting(
        0, "MEDSAM2_MAX_SESSIONS_PER_PRINCIPAL", "open sessions per principal at most (0: --max-sessions)"
    )
    max_state_bytes_per_principal: int = setting(
        0, "MEDSAM2_MAX_STATE_BYTES_PER_PRINCIPAL", "session memory per principal at most (0: --max-state-bytes)"
    )
    max_concurrent_uploads: int = setting(
        8, "MEDSAM2_MAX_CONCURRENT_UPLOADS", "CreateSession streams at once; more are refused with retry info"
    )
    max_uploads_per_principal: int = setting(
        0, "MEDSAM2_MAX_UPLOADS_PER_PRINCIPAL", "CreateSession streams of one principal at once (0: half the cap)"
    )
    upload_idle_timeout_s: float = setting(
        30.0, "MEDSAM2_UPLOAD_IDLE_TIMEOUT_S", "cancel an upload that sends nothing for this long"
    )
    upload_deadline_s: float = setting(900.0, "MEDSAM2_UPLOAD_DEADLINE_S", "cancel an upload still running after this")
    max_concurrent_pacs_fetches: int = setting(
        4,
        "MEDSAM2_MAX_CONCURRENT_PACS_FETCHES",
        "studies fetched from PACS at once, apart from uploads; more are refused with retry info",
    )
    max_pacs_fetches_per_principal: int = setting(
        0, "MEDSAM2_MAX_PACS_FETCHES_PER_PRINCIPAL", "PACS fetches of one principal at once (0: half the cap)"
    )
    max_concurrent_rpcs: int = setting(
        0,
        "MEDSAM2_MAX_CONCURRENT_RPCS",
        "RPCs in flight or queued at most; more get RESOURCE_EXHAUSTED (0: 4 x workers)",
    )
    keepalive_time_s: float = setting(60.0, "MEDSAM2_KEEPALIVE_TIME_S", "seconds between keepalive pings to clients")
    keepalive_timeout_s: float = setting(
        20.0, "MEDSAM2_KEEPALIVE_TIMEOUT_S", "close a connection whose keepalive ping is not answered within this"
    )
    health_port: int = setting(
        0,
        "MEDSAM2_HEALTH_PORT",
        "separate port for health and GetServerInfo, with its own threads, answering while "
        "every worker is busy (0: --port + 1, or any free port when --port is 0; -1: off)",
        minimum=-1,
    )
    # PACS endpoints by name (see pacs/config.py), for CreateSession's PACS studies and the OHIF proxy.
    pacs_config: Path = setting(
        Path(""),
        CONFIG_ENV,
        "PACS endpoints file, TOML or JSON: [endpoints.NAME] url, token_env or username/password_env, timeout_s, "
        "fetch_deadline_s, qido_page_size, max_qido_pages (empty: none but --pacs-endpoint's)",
    )
    pacs_endpoints: tuple[tuple[str, str], ...] = prefixed_setting(
        ENDPOINT_ENV_PREFIX,
        ENDPOINT_ENV_PATTERN,
        "one key of one PACS endpoint, overriding the file: MEDSAM2_PACS_<NAME>_URL, _TOKEN, _USERNAME, _PASSWORD, "
        "_TIMEOUT_S, _FETCH_DEADLINE_S, _QIDO_PAGE_SIZE or _MAX_QIDO_PAGES, e.g. MEDSAM2_PACS_HOSPITAL_URL=https://...",
    )
    # Model versions (see server/versions.py): which numbered version serves, and who may switch it.
    model_version: int = setting(
        0,
        "MEDSAM2_MODEL_VERSION",
        "model repository version to serve at start (0: the newest); SIGHUP or SetModelVersion switch later",
    )
    admin_principals: str = setting(
        "",
        "MEDSAM2_ADMIN_PRINCIPALS",
        "principals allowed admin RPCs such as SetModelVersion, separated by ';' (mTLS subjects hold commas):"
        " names from the tokens file, 'default' for --auth-token, or client certificate subjects (empty: nobody)",
    )


_DEFAULTS = ServerSettings()


def from_setting(name: str) -> Any:
    """A limit's field that is the ``serve`` setting ``name``: the setting's default is its default (so each default
    is written once, above), and ``FromSettings.from_settings`` fills it from the resolved settings."""
    return field(default=getattr(_DEFAULTS, name), metadata={"setting": name})


class FromSettings:
    """Base of a limits dataclass whose ``from_setting`` fields come from the resolved ``serve`` settings."""

    __slots__ = ()

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> Self:
        """The limits as ``serve`` was configured (any other field keeps its default)."""
        own = fields(cls)  # type: ignore[arg-type]  # each subclass is a dataclass
        chosen = {f.name: getattr(settings, f.metadata["setting"]) for f in own if "setting" in f.metadata}
        return cls(**chosen)
