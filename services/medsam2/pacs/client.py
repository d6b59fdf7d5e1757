"""A DICOMweb client for one named endpoint, with every HTTP failure mapped to one of our errors."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from medsam2.errors import NotFound
from medsam2.pacs.config import PacsEndpoint
from medsam2.pacs.errors import PacsAccessDenied, PacsRefused, PacsRejected, PacsUnavailable

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
"""Tries per request on a refused connection, a timeout, or HTTP 408/429/503/504."""
BACKOFF_MS = 250
"""First wait between tries, doubled each time (dicomweb-client's default, 1 s over 5 tries, takes 30 s to fail)."""

if TYPE_CHECKING:
    from dicomweb_client.api import DICOMwebClient


def connect(endpoint: PacsEndpoint) -> DICOMwebClient:
    """A dicomweb-client for ``endpoint`` (QIDO, WADO and STOW under its base URL)."""
    import requests
    from dicomweb_client.api import DICOMwebClient

    session = requests.Session()
    session.headers.update(endpoint.headers())
    client = DICOMwebClient(url=endpoint.url, session=session, timeout=endpoint.timeout_s)
    client.set_http_retry_params(retry=True, max_attempts=MAX_ATTEMPTS, wait_exponential_multiplier=BACKOFF_MS)
    return client


@contextmanager
def pacs_errors(endpoint: PacsEndpoint, action: str, *, storing: bool) -> Iterator[None]:
    """Map requests' exceptions inside the block to ``PacsUnavailable``, ``NotFound``, ``PacsAccessDenied``, and
    any other 4xx to ``PacsRejected`` when ``storing`` (the object was not stored), else ``PacsRefused``."""
    import requests

    try:
        yield
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        # Messages reach remote clients: they name the endpoint, never its URL (the operator's log has it).
        log.warning("PACS %s (%s) answered HTTP %s to %s", endpoint.name, endpoint.url, status, action)
        detail = f"PACS {endpoint.name} answered HTTP {status} to {action}"
        if status == 404:
            raise NotFound(f"{detail}: not found") from exc
        if status in (401, 403):
            raise PacsAccessDenied(f"{detail}: check the endpoint's token") from exc
        if status is not None and status >= 500:
            raise PacsUnavailable(f"{detail}: the PACS failed; try again later") from exc
        reason = exc.response.reason if exc.response is not None else ""
        refused = PacsRejected if storing else PacsRefused
        raise refused(f"{detail}: {reason or 'refused'}") from exc
    except (requests.ConnectionError, requests.Timeout) as exc:
        log.warning("cannot reach PACS %s at %s to %s: %s", endpoint.name, endpoint.url, action, type(exc).__name__)
        raise PacsUnavailable(f"cannot reach PACS {endpoint.name} to {action}: {type(exc).__name__}") from exc
