"""Domain errors to gRPC status codes, in one place; the only module that imports grpc.StatusCode."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from medsam2.errors import (
    BackendUnavailable,
    CapacityExceeded,
    CheckpointError,
    ConfigError,
    InvalidInput,
    Medsam2Error,
    NotFound,
    OutputNotWritable,
    PreconditionFailed,
)
from medsam2.server import metrics

log = logging.getLogger(__name__)


class SessionBusy(PreconditionFailed):
    """Another request holds the session (a propagation is streaming)."""


class Unauthenticated(Medsam2Error):
    """Missing or wrong bearer token."""


_CODES: list[tuple[type[Exception], grpc.StatusCode]] = [
    (SessionBusy, grpc.StatusCode.ABORTED),
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (PreconditionFailed, grpc.StatusCode.FAILED_PRECONDITION),
    (CapacityExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (BackendUnavailable, grpc.StatusCode.UNAVAILABLE),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (CheckpointError, grpc.StatusCode.FAILED_PRECONDITION),
    (ConfigError, grpc.StatusCode.FAILED_PRECONDITION),
    (OutputNotWritable, grpc.StatusCode.FAILED_PRECONDITION),  # e.g. a PACS refused to store a result
]


def status_for(error: Exception) -> grpc.StatusCode:
    """The status code of a domain error; INTERNAL for anything else."""
    for kind, code in _CODES:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


def rpc(method: str) -> Callable:
    """Decorate a servicer method: map errors to statuses and record RPC metrics (unary and streaming)."""

    def wrap(fn: Callable) -> Callable:
        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def stream(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                with metrics.rpc_timer(method) as outcome:
                    try:
                        yield from fn(self, request, context)
                        outcome.code = _cancelled_or_ok(context)
                    except Exception as exc:  # noqa: BLE001 - every error leaves as a status
                        outcome.code = _abort(context, method, exc)
            return stream

        @functools.wraps(fn)
        def unary(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
            with metrics.rpc_timer(method) as outcome:
                try:
                    return fn(self, request, context)
                except Exception as exc:  # noqa: BLE001 - every error leaves as a status
                    outcome.code = _abort(context, method, exc)
        return unary

    return wrap


def _cancelled_or_ok(context: grpc.ServicerContext) -> str:
    return "OK" if context.is_active() else "CANCELLED"


def _abort(context: grpc.ServicerContext, method: str, exc: Exception) -> str:
    code = status_for(exc)
    if code is grpc.StatusCode.INTERNAL:
        log.exception("%s failed", method)
        message = f"internal error ({type(exc).__name__}); see the server log"
    else:
        message = str(exc)
    metrics.ERRORS.labels(kind=type(exc).__name__).inc()
    context.set_code(code)
    context.set_details(message)
    return code.name
