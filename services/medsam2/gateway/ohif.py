"""OHIF at ``/ohif/``: the pinned viewer with the MedSAM2 extension, its generated app-config.js, and a DICOMweb proxy.

``scripts/build_web.sh`` installs stock OHIF (the npm package ``@ohif/app``, pinned) into ``gateway/ohif/``, moved
to ``/ohif/``, with the extension bundled beside it (``medsam2/extension.js``). The gateway serves those files, an
``app-config.js`` written from the configured PACS endpoints (one OHIF data source per endpoint), and the
DICOMweb reads OHIF makes, proxied to the endpoint at ``/ohif/dicomweb/<endpoint>/...``: the browser holds only
its medsam2 token, never the PACS credentials.

The proxy passes only the QIDO-RS searches and WADO-RS reads a viewer needs (GET, paths of UIDs under
``studies/``), each bounded in bytes (``max_response_bytes``, checked from the declared length and while reading)
and in time (the endpoint's timeout as an overall deadline). Every proxied request is authenticated as the API
is (bearer token, or client certificate under mTLS) before anything is sent upstream. Its refusals keep the HTTP
status a DICOMweb client expects (401, 403, 404, 400, 502, 504) and carry the API's ``google.rpc`` details and
catalogued reasons (``UNAUTHENTICATED``, ``PACS_ENDPOINT_NOT_FOUND``, ``PACS_UNAVAILABLE`` with Retry-After, ...).
"""

from __future__ import annotations

import json
import logging
import mimetypes
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from medsam2.errors import (
    BackendUnavailable,
    CapacityExceeded,
    ConfigError,
    InvalidInput,
    Medsam2Error,
    NotFound,
    PermissionDenied,
    TimedOut,
    Unauthenticated,
)
from medsam2.gateway.context import refusal
from medsam2.pacs.config import PacsConfig, PacsEndpoint

log = logging.getLogger(__name__)

OHIF_DIR = Path(__file__).with_name("ohif")
BASE = "/ohif/"
EXTENSION_PATH = "medsam2/extension.js"
PROXY_PREFIX = "dicomweb/"
# OHIF needs inline scripts (its index.html), wasm codecs, blob workers and data: images; it still talks only to
# this origin, and may not be framed.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' 'wasm-unsafe-eval'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self' blob: data:; worker-src 'self' blob:; font-src 'self' data:; "
    "base-uri 'self'; form-action 'none'; frame-ancestors 'none'"
)
_UID = r"[0-9]{1,64}(?:\.[0-9]{1,64}){0,63}"
_INSTANCE = rf"studies/{_UID}/series/{_UID}/instances/{_UID}"
_READS = [
    re.compile(f"^{p}$")
    for p in (
        "studies",
        rf"studies/{_UID}/(?:metadata|series)",
        rf"studies/{_UID}/series/{_UID}/(?:metadata|instances|rendered|thumbnail)",
        rf"{_INSTANCE}/(?:metadata|rendered|thumbnail)",
        rf"{_INSTANCE}/frames/[0-9]{{1,6}}(?:,[0-9]{{1,6}}){{0,63}}(?:/rendered)?",
        rf"{_INSTANCE}/bulk/[0-9A-Fa-f]{{8}}(?:/[0-9]{{1,6}}/[0-9A-Fa-f]{{8}}){{0,4}}",
    )
]
"""QIDO-RS searches and WADO-RS reads under studies/: metadata, frames, rendered, thumbnails, bulk data."""
_QUERY = re.compile(r"^[A-Za-z0-9_.,*%=&+:-]*$")
"""A QIDO query string: attribute names and values as OHIF sends them (percent-encoded), nothing else."""
_FORWARDED = ("Accept",)
_RETURNED = ("Content-Type",)
MAX_RESPONSE_BYTES = 256 * 2**20
"""Default cap on one proxied response (a large series' metadata or a multi-frame object)."""


@dataclass(frozen=True, slots=True)
class ProxyReply:
    """What the proxy answers: an HTTP status, a body and its headers."""

    status: int
    body: bytes
    headers: dict[str, str]


class OhifSite:
    """The files under ``/ohif/``, the generated app-config.js, and the DICOMweb proxy."""

    def __init__(
        self,
        pacs: PacsConfig | None,
        authenticate: Callable[[Any], str],
        *,
        root: Path = OHIF_DIR,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        """``authenticate(context)`` returns the caller's principal or raises ``Unauthenticated``."""
        self.pacs = pacs or PacsConfig()
        self.authenticate = authenticate
        self.root = root
        self.max_response_bytes = max_response_bytes

    @property
    def built(self) -> bool:
        """Whether set-up installed OHIF and the extension."""
        return (self.root / "index.html").is_file() and (self.root / EXTENSION_PATH).is_file()

    def app_config(self) -> bytes:
        """OHIF's ``window.config``: a DICOMweb data source per PACS endpoint (through the proxy), the extension."""
        names = sorted(self.pacs.endpoints)
        sources = [
            {
                "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
                "sourceName": name,
                "configuration": {
                    "friendlyName": f"PACS {name} (through MedSAM2)",
                    "name": name,
                    "wadoUriRoot": f"{BASE}{PROXY_PREFIX}{name}",
                    "qidoRoot": f"{BASE}{PROXY_PREFIX}{name}",
                    "wadoRoot": f"{BASE}{PROXY_PREFIX}{name}",
                    "qidoSupportsIncludeField": False,
                    "imageRendering": "wadors",
                    "thumbnailRendering": "wadors",
                    "enableStudyLazyLoad": True,
                    "supportsFuzzyMatching": False,
                    "supportsWildcard": True,
                    "staticWado": True,
                    "singlepart": "bulkdata,video",
                    "omitQuotationForMultipartRequest": True,
                    "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
                },
            }
            for name in names
        ]
        config = {
            "routerBasename": BASE.rstrip("/"),
            "showStudyList": True,
            "extensions": [f"{BASE}{EXTENSION_PATH}"],
            "modes": [],
            "investigationalUseDialog": {"option": "never"},
            "showWarningMessageForCrossOrigin": False,
            "showCPUFallbackMessage": False,
            "maxNumberOfWebWorkers": 2,
            "defaultDataSourceName": names[0] if names else "",
            "dataSources": sources,
            # Read by the extension: the API is this origin's, the PACS endpoints are the data sources.
            "medsam2": {"api": "", "endpoints": names, "proxy": True},
        }
        return ("window.config = " + json.dumps(config, indent=1) + ";\n").encode()

    def file(self, name: str) -> tuple[bytes, str] | None:
        """A file of the OHIF build (``name`` under /ohif/), index.html for the viewer's own routes, or None."""
        if name == "app-config.js":
            return self.app_config(), "application/javascript; charset=utf-8"
        root = self.root.resolve()
        target = (root / unquote(name)).resolve() if name else root / "index.html"
        if not target.is_relative_to(root):
            return None
        if not target.is_file():
            # OHIF routes (/ohif/viewer, /ohif/segmentation, ...) are the single page's; files have a suffix.
            if "." in name.rsplit("/", 1)[-1]:
                return None
            target = root / "index.html"
            if not target.is_file():
                return None
        kind = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if target.suffix == ".wasm":
            kind = "application/wasm"
        if kind.startswith("text/") or kind in ("application/javascript", "application/json"):
            kind += "; charset=utf-8"
        return target.read_bytes(), kind

    def proxy(self, rest: str, query: str, headers: Mapping[str, str], context: Any) -> ProxyReply:
        """Answer a DICOMweb GET under /ohif/dicomweb/: authenticate, check the path, fetch it bounded."""
        try:
            self.authenticate(context)
        except Unauthenticated as exc:
            return _error(401, exc, {"WWW-Authenticate": "Bearer"})
        name, _, path = rest.partition("/")
        endpoint = self.pacs.endpoints.get(name)
        if endpoint is None:
            known = ", ".join(sorted(self.pacs.endpoints)) or "none"
            message = f"no PACS endpoint {name!r} here; configured: {known}"
            return _error(404, NotFound(message, reason="PACS_ENDPOINT_NOT_FOUND", field="endpoint"))
        if not any(p.match(path) for p in _READS):
            return _error(
                403,
                PermissionDenied(
                    "the DICOMweb proxy passes only QIDO-RS searches and WADO-RS reads under studies/ "
                    "(metadata, frames, rendered, thumbnail, bulk)"
                ),
            )
        if not _QUERY.match(query) or len(query) > 4096:
            message = "the query string has characters a QIDO-RS search does not use"
            return _error(400, InvalidInput(message, field="query"))
        return self._fetch(endpoint, path, query, headers)

    def _fetch(self, endpoint: PacsEndpoint, path: str, query: str, headers: Mapping[str, str]) -> ProxyReply:
        import requests

        url = f"{endpoint.url}/{path}" + (f"?{query}" if query else "")
        sent = {k: v for k, v in headers.items() if k in _FORWARDED}
        sent.update(endpoint.headers())
        sent["Accept-Encoding"] = "identity"  # bytes counted are the bytes sent on
        deadline = time.monotonic() + endpoint.timeout_s
        try:
            with requests.get(url, headers=sent, stream=True, timeout=endpoint.timeout_s, allow_redirects=False) as r:
                declared = r.headers.get("Content-Length")
                if declared is not None and declared.isdigit() and int(declared) > self.max_response_bytes:
                    return self._too_large(endpoint)
                body = bytearray()
                while chunk := r.raw.read1(1 << 16):  # what has arrived: a trickle still meets the deadline
                    body += chunk
                    if len(body) > self.max_response_bytes:
                        return self._too_large(endpoint)
                    if time.monotonic() > deadline:
                        log.warning(
                            "PACS %s took longer than %.0f s to answer a viewer read", endpoint.name, endpoint.timeout_s
                        )
                        message = f"PACS {endpoint.name} took longer than {endpoint.timeout_s:g} s"
                        return _error(504, TimedOut(message, reason="PACS_DEADLINE_EXCEEDED"))
                status = r.status_code
                returned = {k: r.headers[k] for k in _RETURNED if k in r.headers}
        except (requests.ConnectionError, requests.Timeout) as exc:
            log.warning("cannot reach PACS %s for a viewer read: %s", endpoint.name, type(exc).__name__)
            message = f"cannot reach PACS {endpoint.name}: {type(exc).__name__}; try again"
            return _error(502, BackendUnavailable(message, reason="PACS_UNAVAILABLE"))
        if status in (401, 403):
            # The PACS refused our credentials: the viewer's token is fine, the service's configuration is not.
            message = f"PACS {endpoint.name} refused the service's credentials (HTTP {status})"
            return _error(502, ConfigError(message, reason="PACS_ACCESS_DENIED"))
        if status >= 300 and status not in (304,) and status != 404:
            message = f"PACS {endpoint.name} answered HTTP {status}"
            return _error(502, BackendUnavailable(message, reason="PACS_UNAVAILABLE"))
        return ProxyReply(status, bytes(body), returned)

    def _too_large(self, endpoint: PacsEndpoint) -> ProxyReply:
        message = (
            f"PACS {endpoint.name}'s answer is larger than {self.max_response_bytes} bytes (--ohif-max-response-bytes)"
        )
        return _error(502, CapacityExceeded(message, reason="PACS_BUDGET_EXCEEDED"))


def _error(http_status: int, error: Medsam2Error, headers: dict[str, str] | None = None) -> ProxyReply:
    """A refusal of the proxy: the HTTP status a DICOMweb client expects, the API's google.rpc details and reasons."""
    body, extra = refusal(http_status, error)
    return ProxyReply(
        http_status, json.dumps(body).encode(), {"Content-Type": "application/json", **extra, **(headers or {})}
    )


def parse_origins(text: str) -> frozenset[str]:
    """``--cors-origins``: a comma-separated list of exact origins (scheme://host[:port]); empty allows none."""
    from medsam2.errors import ConfigError

    origins = frozenset(o.strip() for o in text.split(",") if o.strip())
    for origin in origins:
        if not re.match(r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$", origin):
            raise ConfigError(
                f"--cors-origins: {origin!r} is not an origin (scheme://host[:port], no path, no wildcard)"
            )
    return origins
