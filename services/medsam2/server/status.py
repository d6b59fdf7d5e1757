"""Domain errors to gRPC statuses with ``google.rpc`` details: the one place a domain error gets its status code.

Other modules name ``grpc.StatusCode`` values too, but none maps an error to one: the auth interceptor refuses with
UNAUTHENTICATED through this module's ``abort``/``rich_status``, the gateway translates a finished call's code to
HTTP, and the clients read the code of a failed call.

Every error leaves through ``context.abort_with_status``, which raises: a unary
method never returns ``None`` after an error, so grpc never logs "Exception
serializing message!". Each status carries an ``ErrorInfo`` (domain
``medsam2``, a stable reason); INVALID_ARGUMENT adds a ``BadRequest`` field
violation, RESOURCE_EXHAUSTED and UNAVAILABLE a ``RetryInfo`` unless the reason's catalogue entry
(``errors.REASONS``, rendered in docs/errors.md) says a retry cannot help. A client that
went away is counted as CANCELLED, not INTERNAL.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from medsam2.errors import (
    REASON_BY_NAME,
    BackendUnavailable,
    CapacityExceeded,
    CheckpointError,
    ClientCancelled,
    ConfigError,
    InvalidInput,
    Medsam2Error,
    NotFound,
    OutputNotWritable,
    PermissionDenied,
    PreconditionFailed,
    SessionBusy,
    TimedOut,
    Unauthenticated,
    Unsupported,
    UploadTimedOut,
    UploadTruncated,
)
from medsam2.server import audit, auth, metrics
from medsam2.server.request_checks import check_request

log = logging.getLogger(__name__)

ERROR_DOMAIN = "medsam2"
"""``ErrorInfo.domain`` of every error this service returns."""

_CODES: list[tuple[type[Exception], grpc.StatusCode]] = [
    (SessionBusy, grpc.StatusCode.ABORTED),
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (PreconditionFailed, grpc.StatusCode.FAILED_PRECONDITION),
    (CapacityExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (BackendUnavailable, grpc.StatusCode.UNAVAILABLE),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (TimedOut, grpc.StatusCode.DEADLINE_EXCEEDED),
    (ClientCancelled, grpc.StatusCode.CANCELLED),
    (Unsupported, grpc.StatusCode.UNIMPLEMENTED),
    (CheckpointError, grpc.StatusCode.FAILED_PRECONDITION),
    (ConfigError, grpc.StatusCode.FAILED_PRECONDITION),
    (OutputNotWritable, grpc.StatusCode.FAILED_PRECONDITION),  # e.g. a PACS refused to store a result
]
DEFAULT_RETRY_S = {grpc.StatusCode.RESOURCE_EXHAUSTED: 5.0, grpc.StatusCode.UNAVAILABLE: 2.0}
"""Retry delay sent when an error does not name its own ``retry_after_s``."""


def status_for(error: Exception | type[Exception]) -> grpc.StatusCode:
    """The status code of a domain error; INTERNAL for anything else."""
    kind_of = error if isinstance(error, type) else type(error)
    for kind, code in _CODES:
        if issubclass(kind_of, kind):
            return code
    return grpc.StatusCode.INTERNAL


def rich_status(code: grpc.StatusCode, message: str, error: Exception | None = None) -> status_pb2.Status:
    """A ``google.rpc.Status`` for ``code`` with the details a client can act on."""
    reason = error.reason if isinstance(error, Medsam2Error) else code.name
    field = error.field if isinstance(error, Medsam2Error) else ""
    # The field at fault rides in ErrorInfo.metadata for every status (e.g. NOT_FOUND's object_id), and in a
    # BadRequest for INVALID_ARGUMENT, as Google's APIs send it.
    metadata = {"field": field} if field else {}
    details = [error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata)]
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        details.append(
            error_details_pb2.BadRequest(
                field_violations=[error_details_pb2.BadRequest.FieldViolation(field=field, description=message)]
            )
        )
    catalogued = REASON_BY_NAME.get(reason)
    if code in DEFAULT_RETRY_S and (catalogued is None or catalogued.retry):
        # A permanent refusal (STUDY_TOO_LARGE, ANNOTATION_QUOTA, BODY_TOO_LARGE, ...: the catalogue's retry=False)
        # carries no RetryInfo: waiting cannot help.
        after = error.retry_after_s if isinstance(error, Medsam2Error) and error.retry_after_s else None
        details.append(error_details_pb2.RetryInfo(retry_delay=_duration(after or DEFAULT_RETRY_S[code])))
    packed = []
    for detail in details:
        holder = any_pb2.Any()
        holder.Pack(detail)
        packed.append(holder)
    return status_pb2.Status(code=getattr(code_pb2, code.name), message=message, details=packed)


def abort(
    context: grpc.ServicerContext, code: grpc.StatusCode, message: str, error: Exception | None = None
) -> NoReturn:
    """End the call with ``code``, ``message`` and rich details (raises, as ``context.abort`` does)."""
    context.abort_with_status(rpc_status.to_status(rich_status(code, message, error)))
    raise AssertionError("abort_with_status returned")  # grpc's abort always raises


def rpc(method: str) -> Callable:
    """Decorate a servicer method: identify the caller, check the request, map errors, record metrics and audit."""

    def wrap(fn: Callable) -> Callable:
        if inspect.isgeneratorfunction(fn):

            @functools.wraps(fn)
            def stream(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                call = _Call(self, method, context)
                with metrics.rpc_timer(method) as outcome:
                    try:
                        call.begin(request)
                        yield from fn(self, request, context)
                        outcome.code = _cancelled_or_ok(context)
                    except GeneratorExit:  # the client went away and grpc closed the stream
                        outcome.code = "CANCELLED"
                        raise
                    except Exception as exc:
                        code, message, error = call.classify(exc)
                        outcome.code = code.name
                        abort(context, code, message, error)
                    finally:
                        call.end(outcome.code, _session_id(request))

            return stream

        @functools.wraps(fn)
        def unary(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
            call = _Call(self, method, context)
            response = None
            with metrics.rpc_timer(method) as outcome:
                try:
                    call.begin(request)
                    response = fn(self, request, context)
                    return response
                except Exception as exc:
                    code, message, error = call.classify(exc)
                    outcome.code = code.name
                    abort(context, code, message, error)
                finally:
                    call.end(outcome.code, _session_id(request) or _session_id(response))

        return unary

    return wrap


class _Call:
    """One RPC's identity, clock and error exit."""

    def __init__(self, servicer: Any, method: str, context: grpc.ServicerContext) -> None:
        self.servicer = servicer
        self.method = method
        self.context = context
        self.principal = ""
        self.binding: object = None
        self.started = time.perf_counter()
        self.counted: contextlib.AbstractContextManager | None = None

    def begin(self, request: Any) -> None:
        """Identify the caller (bound for the registry's ownership checks) and check the request's surface."""
        self.principal = self.servicer.auth.principal_of(self.context)
        self.binding = auth.bind(self.principal, self.method)
        drain = getattr(self.servicer, "drain", None)
        if drain is not None:
            # Counted while it runs, so shutdown closes no backend under it; refused once draining began.
            counted = drain.call()
            counted.__enter__()
            self.counted = counted
        if request is not None and not inspect.isgenerator(request) and hasattr(request, "ListFields"):
            check_request(request)

    def classify(self, exc: Exception) -> tuple[grpc.StatusCode, str, Exception]:
        """The status, client-facing message and error to report for ``exc`` (logs INTERNAL ones)."""
        code = status_for(exc)
        if isinstance(exc, UploadTruncated):
            # A client that cancels ends the request stream a moment before gRPC marks the call inactive: give
            # the cancellation that moment, so a departure is not reported as a malformed upload.
            _wait_inactive(self.context, TRUNCATION_GRACE_S)
        if not isinstance(exc, UploadTimedOut) and not self.context.is_active():
            # The client went away: a disconnect mid-upload surfaces as an RpcError or a short stream, and
            # whatever error followed from it is the client's leaving, not a fault (only our own watchdog's
            # cancel of a stalled upload keeps its status).
            code, exc = grpc.StatusCode.CANCELLED, ClientCancelled("the client cancelled or disconnected")
        if code is grpc.StatusCode.INTERNAL:
            log.exception("%s failed", self.method)
            message = f"internal error ({type(exc).__name__}); see the server log"
        else:
            message = str(exc)
        metrics.ERRORS.labels(kind=type(exc).__name__).inc()
        return code, message, exc

    def end(self, outcome: str, session_id: str) -> None:
        """Write the audit line and forget the caller's identity."""
        audit.record(
            principal=self.principal or "-",
            rpc=self.method,
            session_id=session_id,
            outcome=outcome,
            duration_s=time.perf_counter() - self.started,
        )
        auth.unbind(self.binding)
        if self.counted is not None:
            self.counted.__exit__(None, None, None)
            self.counted = None


def _session_id(message: Any) -> str:
    return getattr(message, "session_id", "") if message is not None else ""


def _cancelled_or_ok(context: grpc.ServicerContext) -> str:
    return "OK" if context.is_active() else "CANCELLED"


def _duration(seconds: float) -> duration_pb2.Duration:
    whole = int(seconds)
    return duration_pb2.Duration(seconds=whole, nanos=int((seconds - whole) * 1e9))


TRUNCATION_GRACE_S = 0.5
"""How long a truncated upload waits to learn whether its client cancelled (then it is CANCELLED, not invalid)."""


def _wait_inactive(context: grpc.ServicerContext, timeout_s: float) -> None:
    """Return once ``context`` is no longer active, or after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while context.is_active() and time.monotonic() < deadline:
        time.sleep(0.01)
