"""Every error the product raises on purpose.

Each type says what went wrong in its name; the gRPC layer maps them to status
codes in one place and the command line maps them to exit codes.

Any error may carry keyword-only details that the gRPC layer returns as
``google.rpc`` details: ``field`` (the request field at fault, for ``BadRequest``),
``reason`` (a stable UPPER_SNAKE word for ``ErrorInfo``; each type has a default)
and ``retry_after_s`` (for ``RetryInfo`` on capacity and availability errors).
"""

from __future__ import annotations


class Medsam2Error(Exception):
    """Base of every deliberate error; its message names the problem."""

    reason = "MEDSAM2_ERROR"
    """The ``ErrorInfo`` reason of this type unless a raise names another."""

    def __init__(self, *args: object, field: str = "", reason: str = "", retry_after_s: float | None = None) -> None:
        super().__init__(*args)
        self.field = field
        if reason:
            self.reason = reason
        self.retry_after_s = retry_after_s


class InvalidInput(Medsam2Error, ValueError):
    """A request, prompt, array or file argument is malformed."""

    reason = "INVALID_INPUT"


class UploadTruncated(InvalidInput):
    """An upload stream ended before the bytes its header announced (a client that left, or a buggy one)."""

    reason = "UPLOAD_TRUNCATED"


class InvalidPrompt(InvalidInput):
    """A prompt does not fit the study (box outside the slice, empty box, bad mask)."""

    reason = "INVALID_PROMPT"


class PreconditionFailed(Medsam2Error):
    """The request is valid but the state does not allow it yet (e.g. propagating before any prompt)."""

    reason = "PRECONDITION_FAILED"


class SessionBusy(PreconditionFailed):
    """Another request holds the session (a propagation is streaming); the message says which."""

    reason = "SESSION_BUSY"


class NotFound(Medsam2Error, LookupError):
    """A named thing (object, frame, session, checkpoint) does not exist."""

    reason = "NOT_FOUND"


class SessionNotFound(NotFound):
    """No session of this id exists for the caller (never opened, closed, or another principal's)."""

    reason = "SESSION_NOT_FOUND"


class SessionEvicted(SessionNotFound):
    """The caller's session was removed by the service (capacity or idle TTL), not by its owner."""

    reason = "SESSION_EVICTED"


class SessionClosed(SessionNotFound):
    """The session was closed while a request was using it (CloseSession ends a running Propagate)."""

    reason = "SESSION_CLOSED"


class CheckpointError(Medsam2Error):
    """A checkpoint file is missing, corrupt, truncated or does not match the model."""

    reason = "CHECKPOINT_ERROR"


class ConfigError(Medsam2Error):
    """A model config or a setting is wrong."""

    reason = "CONFIG_ERROR"


class OutputNotWritable(Medsam2Error, OSError):
    """An output path or folder cannot be written."""

    reason = "OUTPUT_NOT_WRITABLE"


class DownloadError(Medsam2Error):
    """A published checkpoint could not be fetched or failed its checksum."""

    reason = "DOWNLOAD_ERROR"


class BackendUnavailable(Medsam2Error):
    """The inference backend (a runtime, a GPU, TensorRT, Triton) is not there or not ready."""

    reason = "BACKEND_UNAVAILABLE"


class ShuttingDown(BackendUnavailable):
    """The server is draining (SIGTERM): it takes no new calls and ends streams at the grace period; retry."""

    reason = "SERVER_SHUTTING_DOWN"


class CapacityExceeded(Medsam2Error):
    """A configured limit would be exceeded."""

    reason = "CAPACITY_EXCEEDED"


class Unauthenticated(Medsam2Error):
    """Missing or wrong credentials (bearer token or client certificate)."""

    reason = "UNAUTHENTICATED"


class PermissionDenied(Medsam2Error):
    """The caller is known but may not do this (an admin RPC from a principal that is not an admin)."""

    reason = "PERMISSION_DENIED"


class UploadTimedOut(Medsam2Error):
    """An upload sent nothing for too long, or did not finish within its total deadline."""

    reason = "UPLOAD_TIMED_OUT"


class ClientCancelled(Medsam2Error):
    """The client went away (cancelled or disconnected) before the request finished."""

    reason = "CLIENT_CANCELLED"
