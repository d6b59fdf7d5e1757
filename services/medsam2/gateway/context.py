"""A ``grpc.ServicerContext`` for calls that arrive over HTTP, and gRPC statuses as HTTP error bodies.

A failed call's body is its ``google.rpc.Status`` in proto3 JSON, as Google's HTTP APIs write it:
``{"error": {"code": <HTTP status>, "status": "<gRPC code name>", "message": ..., "details": [...]}}``, each
detail an ``Any`` with its ``@type`` (``ErrorInfo``, ``BadRequest``, ``RetryInfo``, ...): exactly the details the
servicer attached for gRPC clients. A ``RetryInfo`` also becomes a ``Retry-After`` header. The gateway's own
refusals (``refusal``: a path, a media type, a body, a request head, a full listener, the OHIF proxy) are domain
errors too: their status comes from the servicer's one mapping (``status_for``) and their details from its
``rich_status``, so they follow the same catalogue rules; only the HTTP status is HTTP's own (413, 415, 431, ...).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import grpc
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2

from medsam2.errors import REASON_BY_NAME, Medsam2Error
from medsam2.server.status import rich_status, status_for

STATUS_DETAILS_KEY = "grpc-status-details-bin"
"""The trailing metadata key under which grpc carries the serialized ``google.rpc.Status``."""

# Google's HTTP mapping of the canonical codes (google/rpc/code.proto), as grpc-gateway uses it.
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}


def _auth_context(certificate: dict | None) -> dict[str, list[bytes]]:
    """The keys grpc's auth_context() gives for a verified client certificate, so principals match on both ports."""
    if not certificate:
        return {}
    names = [value.encode() for rdn in certificate.get("subject", ()) for key, value in rdn if key == "commonName"]
    alternative = [value.encode() for _, value in certificate.get("subjectAltName", ())]
    auth = {"transport_security_type": [b"ssl"], "x509_common_name": names}
    if alternative:
        auth["x509_subject_alternative_name"] = alternative
    return auth


class Aborted(Exception):
    """Raised by ``abort``, as grpc does, to end the handler."""


class HttpCallContext(grpc.ServicerContext):
    """The part of a servicer context that handlers and interceptors use, for one HTTP request."""

    def __init__(self, metadata: tuple[tuple[str, str], ...], peer: str, *, certificate: dict | None = None) -> None:
        """``certificate``: the verified client certificate (``ssl.getpeercert()``) under mutual TLS."""
        self._metadata = metadata
        self._peer = peer
        self._auth = _auth_context(certificate)
        self._code: grpc.StatusCode | None = None
        self._details = ""
        self._status: status_pb2.Status | None = None
        self._active = True
        self._callbacks: list[Callable[[], None]] = []

    # -- what the servicer reads and sets ---------------------------------------------
    def invocation_metadata(self):  # noqa: ANN201
        return self._metadata

    def peer(self) -> str:
        return self._peer

    def peer_identities(self):  # noqa: ANN201
        key = self.peer_identity_key()
        return self._auth[key] if key else None

    def peer_identity_key(self):  # noqa: ANN201
        for key in ("x509_subject_alternative_name", "x509_common_name"):
            if self._auth.get(key):
                return key
        return None

    def auth_context(self) -> dict:
        return dict(self._auth)

    def is_active(self) -> bool:
        return self._active

    def time_remaining(self):  # noqa: ANN201
        return None

    def cancel(self) -> None:
        """The HTTP client went away: handlers see ``is_active() == False``."""
        self._active = False

    def add_callback(self, callback: Callable[[], None]) -> bool:
        self._callbacks.append(callback)
        return True

    def run_callbacks(self) -> None:
        """Call what handlers registered for the end of the call."""
        for callback in self._callbacks:
            callback()
        self._callbacks.clear()

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code
        self._status = None

    def set_details(self, details: str) -> None:
        self._details = details

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def details(self) -> str:
        return self._details

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details
        raise Aborted(details)

    def abort_with_status(self, status) -> None:  # noqa: ANN001
        for key, value in getattr(status, "trailing_metadata", None) or ():
            if key == STATUS_DETAILS_KEY:
                self._status = status_pb2.Status.FromString(value)
        self.abort(status.code, status.details)

    def send_initial_metadata(self, initial_metadata) -> None:  # noqa: ANN001
        pass

    def set_trailing_metadata(self, trailing_metadata) -> None:  # noqa: ANN001
        pass

    def trailing_metadata(self):  # noqa: ANN201
        return ()

    def set_compression(self, compression) -> None:  # noqa: ANN001
        pass

    def disable_next_message_compression(self) -> None:
        pass

    # -- what the gateway reads --------------------------------------------------------
    def failed(self) -> bool:
        """True when the handler ended with a status other than OK."""
        return self._code not in (None, grpc.StatusCode.OK)

    def error(self) -> tuple[int, dict]:
        """The HTTP status and JSON error body (``google.rpc.Status`` with its details) of a failed call."""
        code = self._code or grpc.StatusCode.UNKNOWN
        http = HTTP_STATUS.get(code, 500)
        error: dict = {"code": http, "status": code.name, "message": self._details}
        if self._status is not None and self._status.details:
            error["details"] = [detail_json(detail) for detail in self._status.details]
        return http, {"error": error}

    def refuse(self, error: Medsam2Error) -> None:
        """End the call with ``error``'s status and details, as the servicer's errors end (without raising)."""
        code = status_for(error)
        self._code, self._details, self._status = code, str(error), rich_status(code, str(error), error)

    def error_headers(self) -> dict[str, str]:
        """``Retry-After`` (whole seconds, rounded up) when the status carries a ``RetryInfo``."""
        return retry_after(self._status)


def retry_after(status: status_pb2.Status | None) -> dict[str, str]:
    """``Retry-After`` (whole seconds, rounded up) when ``status`` carries a ``RetryInfo``; else nothing."""
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            delay = info.retry_delay.seconds + info.retry_delay.nanos / 1e9
            return {"Retry-After": str(max(1, math.ceil(delay)))}
    return {}


def catalogued(message: str, *, reason: str, field: str = "", retry_after_s: float | None = None) -> Medsam2Error:
    """The error of a catalogued ``reason`` (``errors.REASONS``): the catalogue's type, so its status is the
    catalogue's. An uncatalogued reason is a bug (KeyError), not a refusal with a status picked here."""
    return REASON_BY_NAME[reason].error(message, reason=reason, field=field, retry_after_s=retry_after_s)


def refusal(http_status: int, error: Medsam2Error) -> tuple[dict, dict[str, str]]:
    """The JSON body and headers of a refusal the gateway makes itself (before or beside the servicer).

    ``error`` names the reason (and the field, the retry delay); its status is ``status_for(error)`` and the
    details are the ones ``rich_status`` gives the servicer's errors: ErrorInfo with the field in its metadata, a
    BadRequest for INVALID_ARGUMENT, a RetryInfo (and Retry-After) exactly where the catalogue says a retry can help.
    """
    code = status_for(error)
    status = rich_status(code, str(error), error)
    body = {
        "code": http_status,
        "status": code.name,
        "message": str(error),
        "details": [detail_json(detail) for detail in status.details],
    }
    return {"error": body}, retry_after(status)


def detail_json(detail) -> dict:  # noqa: ANN001 - a google.protobuf.Any
    """One status detail in proto3 JSON (``@type`` plus its fields); an unknown type keeps only its ``@type``."""
    try:
        return json_format.MessageToDict(detail)
    except (TypeError, KeyError, json_format.Error):
        return {"@type": detail.type_url}
