"""PACS endpoints by name: a base DICOMweb URL, an optional bearer token, timeouts and bounds.

Endpoints come from a JSON or TOML file and from the environment, which wins:

    # pacs.toml (or the same shape in JSON)
    [endpoints.hospital]
    url = "https://pacs.example.org/dicom-web"
    token_env = "HOSPITAL_PACS_TOKEN"   # bearer token; or token = "..." (keep secrets out of files)
    timeout_s = 30                      # the longest wait for any one connect or read
    fetch_deadline_s = 300              # a whole fetch (QIDO, then WADO of the series) ends by then
    qido_page_size = 500                # QIDO-RS results asked for per page (limit=)
    max_qido_pages = 20                 # pages one search may take at most

    [endpoints.orthanc]                 # HTTP basic authentication instead of a token
    url = "http://127.0.0.1:8042/dicom-web"
    username = "medsam2"
    password_env = "ORTHANC_PASSWORD"   # or password = "..."

    MEDSAM2_PACS_CONFIG=/etc/medsam2/pacs.toml      the file
    MEDSAM2_PACS_<NAME>_URL, _TOKEN, _USERNAME, _PASSWORD, _TIMEOUT_S, _FETCH_DEADLINE_S, _QIDO_PAGE_SIZE,
    _MAX_QIDO_PAGES   one endpoint, or override the file's

The environment is passed in (``load_config(path, environ)``), never read at import.
"""

from __future__ import annotations

import base64
import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from urllib.parse import urlsplit

from medsam2.errors import ConfigError, NotFound

CONFIG_ENV = "MEDSAM2_PACS_CONFIG"
ENDPOINT_ENV_PREFIX = "MEDSAM2_PACS_"
ENDPOINT_ENV_PATTERN = (
    r"MEDSAM2_PACS_([A-Z0-9_]+?)_(URL|TOKEN|USERNAME|PASSWORD|TIMEOUT_S|FETCH_DEADLINE_S|QIDO_PAGE_SIZE|MAX_QIDO_PAGES)"
)
"""The variables of one endpoint, ``MEDSAM2_PACS_<NAME>_<KEY>`` (``serve`` takes them as ``--pacs-endpoint`` too)."""
_ENV_ENDPOINT = re.compile(f"^{ENDPOINT_ENV_PATTERN}$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_KEYS = frozenset(
    {
        "url",
        "token",
        "token_env",
        "username",
        "password",
        "password_env",
        "timeout_s",
        "fetch_deadline_s",
        "qido_page_size",
        "max_qido_pages",
    }
)


@dataclass(frozen=True, slots=True)
class PacsEndpoint:
    """One DICOMweb service: where it is and how to authenticate."""

    name: str
    url: str
    token: str | None = field(default=None, repr=False)
    timeout_s: float = 30.0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    fetch_deadline_s: float = 300.0
    """A whole fetch (its QIDO searches and the WADO-RS transfer) is stopped once this has passed."""
    qido_page_size: int = 500
    """Results asked for per QIDO-RS page (``limit``); a full page means another page is asked for."""
    max_qido_pages: int = 20
    """Pages one QIDO-RS search may take; a PACS that pages on past this is refused."""

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ConfigError(f"PACS endpoint name {self.name!r} must be lower-case letters, digits, '-' or '_'")
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"PACS endpoint {self.name}: url must be an http(s) URL with a host, got {self.url!r}")
        if not self.timeout_s > 0:
            raise ConfigError(f"PACS endpoint {self.name}: timeout_s must be positive, got {self.timeout_s}")
        if not self.fetch_deadline_s > 0:
            raise ConfigError(
                f"PACS endpoint {self.name}: fetch_deadline_s must be positive, got {self.fetch_deadline_s}"
            )
        for key in ("qido_page_size", "max_qido_pages"):
            if int(getattr(self, key)) < 1:
                raise ConfigError(f"PACS endpoint {self.name}: {key} must be at least 1, got {getattr(self, key)}")
        if self.token and self.username:
            raise ConfigError(f"PACS endpoint {self.name}: give a token or a username/password, not both")
        if (self.username is None) != (self.password is None):
            raise ConfigError(f"PACS endpoint {self.name}: basic authentication needs both username and password")

    def headers(self) -> dict[str, str]:
        """HTTP headers for every request: the bearer token or basic credentials, if any."""
        if self.token:
            return {"Authorization": f"Bearer {self.token}"}
        if self.username is not None and self.password is not None:
            pair = base64.b64encode(f"{self.username}:{self.password}".encode()).decode("ascii")
            return {"Authorization": f"Basic {pair}"}
        return {}


@dataclass(frozen=True, slots=True)
class PacsConfig:
    """All configured endpoints, by name."""

    endpoints: Mapping[str, PacsEndpoint] = field(default_factory=dict)

    def get(self, name: str) -> PacsEndpoint:
        """The endpoint called ``name``, or ``NotFound`` listing the configured ones."""
        try:
            return self.endpoints[name]
        except KeyError:
            known = ", ".join(sorted(self.endpoints)) or "none"
            raise NotFound(
                f"unknown PACS endpoint {name!r}; configured: {known} (set {CONFIG_ENV} or MEDSAM2_PACS_<NAME>_URL)",
                reason="PACS_ENDPOINT_NOT_FOUND",
                field="endpoint",
            ) from None


def load_config(path: Path | None = None, environ: Mapping[str, str] | None = None) -> PacsConfig:
    """Endpoints from ``path`` (or ``$MEDSAM2_PACS_CONFIG``), then overridden by ``MEDSAM2_PACS_<NAME>_*``."""
    environ = environ or {}
    if path is None and environ.get(CONFIG_ENV):
        path = Path(environ[CONFIG_ENV])
    raw: dict[str, dict[str, object]] = {}
    if path is not None:
        raw = _read_file(Path(path))
    for variable, value in environ.items():
        match = _ENV_ENDPOINT.match(variable)
        if match:
            name, key = match.group(1).lower(), match.group(2).lower()
            raw.setdefault(name, {})[key] = value
    endpoints = {name: _endpoint(name, entry, environ, path) for name, entry in raw.items()}
    return PacsConfig(MappingProxyType(endpoints))


def _read_file(path: Path) -> dict[str, dict[str, object]]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read the PACS config {path}: {exc.strerror or exc}") from exc
    try:
        data = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        kind = "TOML" if path.suffix.lower() == ".toml" else "JSON"
        raise ConfigError(f"the PACS config {path} is not valid {kind}: {exc}") from exc
    endpoints = data.get("endpoints") if isinstance(data, dict) else None
    if not isinstance(endpoints, dict) or not all(isinstance(v, dict) for v in endpoints.values()):
        raise ConfigError(f"the PACS config {path} needs an 'endpoints' table of name -> {{url, ...}}")
    return {str(name): dict(entry) for name, entry in endpoints.items()}


def _endpoint(name: str, entry: Mapping[str, object], environ: Mapping[str, str], path: Path | None) -> PacsEndpoint:
    where = f"PACS endpoint {name}" + (f" in {path}" if path else "")
    unknown = set(entry) - _KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_KEYS)}")
    if "url" not in entry:
        raise ConfigError(f"{where} has no url")
    token = _secret(entry, "token", environ, where)
    password = _secret(entry, "password", environ, where)
    username = entry.get("username")
    return PacsEndpoint(
        name=name,
        url=str(entry["url"]).rstrip("/"),
        token=token,
        timeout_s=_number(entry, "timeout_s", 30.0, float, where),
        username=str(username) if username is not None else None,
        password=password,
        fetch_deadline_s=_number(entry, "fetch_deadline_s", 300.0, float, where),
        qido_page_size=_number(entry, "qido_page_size", 500, int, where),
        max_qido_pages=_number(entry, "max_qido_pages", 20, int, where),
    )


def _number(entry: Mapping[str, object], key: str, default: float, kind: type, where: str):  # noqa: ANN202
    """``entry[key]`` as ``kind`` (float or int), or ``default`` when absent."""
    try:
        return kind(entry.get(key, default))
    except (TypeError, ValueError):
        noun = "a whole number" if kind is int else "a number"
        raise ConfigError(f"{where}: {key} must be {noun}, got {entry.get(key)!r}") from None


def _secret(entry: Mapping[str, object], key: str, environ: Mapping[str, str], where: str) -> str | None:
    """``key`` from the entry itself or from the variable its ``<key>_env`` names."""
    value = entry.get(key)
    if value is None and entry.get(f"{key}_env"):
        variable = str(entry[f"{key}_env"])
        if variable not in environ:
            raise ConfigError(f"{where}: its {key}_env {variable} is not set")
        value = environ[variable]
    return str(value) if value not in (None, "") else None
