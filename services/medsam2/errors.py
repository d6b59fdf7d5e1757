"""Every error the product raises on purpose.

Each type says what went wrong in its name; the gRPC layer maps them to status
codes in one place and the command line maps them to exit codes.

Any error may carry keyword-only details that the gRPC layer returns as
``google.rpc`` details: ``field`` (the request field at fault, for ``BadRequest``),
``reason`` (a stable UPPER_SNAKE word for ``ErrorInfo``; each type has a default)
and ``retry_after_s`` (for ``RetryInfo`` on capacity and availability errors).
"""

from __future__ import annotations

from dataclasses import dataclass


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


class Unsupported(Medsam2Error):
    """The request needs a protocol feature this server does not implement (an HTTP method, version or coding)."""

    reason = "UNSUPPORTED_PROTOCOL"


class TimedOut(Medsam2Error):
    """Work did not finish within its deadline (an upload, a fetch from PACS)."""

    reason = "TIMED_OUT"


class UploadTimedOut(TimedOut):
    """An upload sent nothing for too long, or did not finish within its total deadline."""

    reason = "UPLOAD_TIMED_OUT"


class ClientCancelled(Medsam2Error):
    """The client went away (cancelled or disconnected) before the request finished."""

    reason = "CLIENT_CANCELLED"


# -- the catalogue of reasons ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Reason:
    """One ``ErrorInfo`` reason: the error type that carries it, whether a retry can help, and the field at fault."""

    name: str
    error: type[Medsam2Error]
    retry: bool
    """Whether the same request can succeed later (after ``RetryInfo``'s delay, when one is sent)."""
    field: str
    """The request field at fault (``BadRequest.field``), or '' when the request is not at fault."""
    meaning: str


REASONS: tuple[Reason, ...] = (
    # INVALID_ARGUMENT: the request itself is wrong; BadRequest.field names the field.
    Reason("INVALID_INPUT", InvalidInput, False, "the field named", "A request field is malformed or out of range."),
    Reason(
        "INVALID_PROMPT",
        InvalidPrompt,
        False,
        "box, points, mask, object_id or slice",
        "A prompt does not fit the study.",
    ),
    Reason(
        "REQUEST_ID_REUSED",
        InvalidInput,
        False,
        "request_id",
        "A request id sent again with a different request: a new request takes a new id.",
    ),
    Reason(
        "UPLOAD_TRUNCATED", UploadTruncated, True, "voxels", "The upload ended before the bytes its header announced."
    ),
    # FAILED_PRECONDITION: valid, but the session's or the server's state does not allow it.
    Reason("NO_PROMPTS", PreconditionFailed, False, "", "Propagate before any prompt: add a box, points or a mask."),
    Reason("NOT_PROPAGATED", PreconditionFailed, False, "correction", "A correction of an object never propagated."),
    Reason("NO_MASKS", PreconditionFailed, False, "", "Nothing segmented yet to save or to write as DICOM."),
    Reason("PACS_NOT_CONFIGURED", PreconditionFailed, False, "", "The server has no PACS endpoint."),
    Reason("ANNOTATION_STORE_DISABLED", PreconditionFailed, False, "", "The server keeps no annotation store."),
    Reason(
        "IMAGE_NOT_KEPT", PreconditionFailed, False, "session_id", "GetImage on a session opened without keep_image."
    ),
    Reason("NO_DICOM_SOURCE", PreconditionFailed, False, "", "DICOM results for an upload without DICOM identity."),
    Reason(
        "DICOM_HEADERS_MISSING",
        PreconditionFailed,
        False,
        "",
        "DICOM results for an upload with UIDs but no headers: StoreResult reads them from PACS.",
    ),
    Reason(
        "DICOM_SOURCE_MISMATCH",
        PreconditionFailed,
        False,
        "",
        "The PACS series the upload names does not describe its voxels.",
    ),
    Reason(
        "MODEL_NOT_VERSIONED", PreconditionFailed, False, "", "SetModelVersion on a server with one unversioned model."
    ),
    Reason(
        "MODEL_VERSION_UNAVAILABLE",
        PreconditionFailed,
        False,
        "",
        "A stored session's model version cannot be loaded here.",
    ),
    Reason("PRECONDITION_FAILED", PreconditionFailed, False, "", "Another state that does not allow the request."),
    Reason("PACS_BAD_RESPONSE", PreconditionFailed, False, "", "The PACS answered, but not in DICOMweb."),
    Reason(
        "PACS_REFUSED",
        PreconditionFailed,
        False,
        "",
        "The PACS refused a search or retrieve with an HTTP 4xx other than 401, 403 and 404.",
    ),
    Reason("PACS_MISMATCH", PreconditionFailed, False, "", "What the PACS sent is not what was asked for."),
    Reason("PACS_WRONG_STUDY", PreconditionFailed, False, "", "The PACS sent instances of another study."),
    Reason("PACS_WRONG_SERIES", PreconditionFailed, False, "", "The PACS sent instances of another series."),
    Reason(
        "PACS_INCONSISTENT_SERIES",
        PreconditionFailed,
        False,
        "",
        "The series is not one stack: Patient ID, Frame of Reference or Rows/Columns differ between instances "
        "(or from what the search listed).",
    ),
    Reason(
        "PACS_UNLISTED_INSTANCE", PreconditionFailed, False, "", "The PACS sent an instance its search never listed."
    ),
    Reason("PACS_INCOMPLETE_SERIES", PreconditionFailed, False, "", "Instances the PACS listed never arrived."),
    Reason(
        "CHECKPOINT_ERROR", CheckpointError, False, "", "A checkpoint is missing, corrupt or does not match the model."
    ),
    Reason("CONFIG_ERROR", ConfigError, False, "", "A server setting or model config is wrong."),
    Reason("OUTPUT_NOT_WRITABLE", OutputNotWritable, False, "", "An output cannot be written."),
    Reason(
        "INVALID_UID", InvalidInput, False, "header.pacs.study_uid", "A study or series UID that is not a DICOM UID."
    ),
    Reason(
        "MALFORMED_REQUEST",
        InvalidInput,
        False,
        "body, X-Medsam2-Header or request (its line or headers)",
        "HTTP gateway: a request line, header, Content-Length, chunked framing or JSON body it cannot read (400).",
    ),
    Reason(
        "UNSUPPORTED_MEDIA_TYPE", InvalidInput, False, "Content-Type", "HTTP gateway: a Content-Type it does not take."
    ),
    # UNIMPLEMENTED: the server does not implement what the request needs.
    Reason(
        "UNSUPPORTED_PROTOCOL",
        Unsupported,
        False,
        "request or Transfer-Encoding",
        "HTTP gateway: an HTTP method, HTTP version or Transfer-Encoding (other than chunked) it does not serve "
        "(501, 505).",
    ),
    # ABORTED: someone else holds the session.
    Reason("SESSION_BUSY", SessionBusy, True, "", "Another request (a streaming Propagate) holds the session."),
    # NOT_FOUND.
    Reason("NOT_FOUND", NotFound, False, "", "A named thing does not exist (a PACS study, series or instance)."),
    Reason("OBJECT_NOT_FOUND", NotFound, False, "object_id", "No object of this id in the session."),
    Reason("PACS_ENDPOINT_NOT_FOUND", NotFound, False, "endpoint", "No configured PACS endpoint of this name."),
    Reason("MODEL_VERSION_NOT_FOUND", NotFound, False, "version", "No model version of this number."),
    Reason("NO_SUCH_PATH", NotFound, False, "", "HTTP gateway: no page or file at this path (404)."),
    Reason("NO_SUCH_METHOD", NotFound, False, "", "HTTP gateway: no API method at this path (404)."),
    Reason("SESSION_NOT_FOUND", SessionNotFound, False, "session_id", "No session of this id for the caller."),
    Reason("SESSION_EVICTED", SessionEvicted, False, "session_id", "The service removed the session (capacity)."),
    Reason("SESSION_EXPIRED", SessionEvicted, False, "session_id", "The session expired after its idle TTL."),
    Reason("SESSION_CLOSED", SessionClosed, False, "session_id", "The session was closed while the request used it."),
    # RESOURCE_EXHAUSTED.
    Reason(
        "STUDY_TOO_LARGE", CapacityExceeded, False, "header.shape", "The study has more voxels than the server allows."
    ),
    Reason("SERVICE_FULL", CapacityExceeded, True, "", "The service holds as many sessions or bytes as it may."),
    Reason("PRINCIPAL_QUOTA", CapacityExceeded, True, "", "The caller holds as many sessions or bytes as it may."),
    Reason(
        "STATE_LIMIT",
        CapacityExceeded,
        True,
        "",
        "A propagation passed the state limit: it can run once other sessions close (or over a smaller range).",
    ),
    Reason("UPLOADS_FULL", CapacityExceeded, True, "", "Too many uploads are in flight."),
    Reason("ANNOTATION_QUOTA", CapacityExceeded, False, "", "The caller's annotation folder is full."),
    Reason("CAPACITY_EXCEEDED", CapacityExceeded, True, "", "Another configured limit."),
    Reason(
        "PACS_FETCHES_FULL", CapacityExceeded, True, "", "Too many PACS fetches are in flight (in all or the caller's)."
    ),
    Reason(
        "PACS_BUDGET_EXCEEDED",
        CapacityExceeded,
        False,
        "",
        "A PACS response passed its byte budget (set from the session limits before the request): the PACS sent "
        "more than the study it listed.",
    ),
    Reason("PACS_TOO_MANY_PAGES", CapacityExceeded, False, "", "A PACS search kept paging past its page bound."),
    Reason("PACS_TOO_MANY_RESULTS", CapacityExceeded, False, "", "A PACS search listed more instances than allowed."),
    Reason("BODY_TOO_LARGE", CapacityExceeded, False, "", "HTTP gateway: a body larger than max_message_bytes (413)."),
    Reason(
        "HEADERS_TOO_LARGE",
        CapacityExceeded,
        False,
        "",
        "HTTP gateway: a request line or headers longer than it reads (414, 431); a large upload header goes at "
        "the start of the body (application/vnd.medsam2.upload).",
    ),
    # UNAVAILABLE.
    Reason("BACKEND_UNAVAILABLE", BackendUnavailable, True, "", "The inference backend is not there or not ready."),
    Reason("PACS_UNAVAILABLE", BackendUnavailable, True, "", "The PACS cannot be reached or failed."),
    Reason("PACS_TRANSFER_BROKEN", BackendUnavailable, True, "", "A PACS response broke off before it was whole."),
    Reason("STORE_UNAVAILABLE", BackendUnavailable, True, "", "The session store cannot be reached."),
    Reason(
        "SERVER_SHUTTING_DOWN",
        ShuttingDown,
        True,
        "",
        "The server is draining (SIGTERM): retry, on another replica behind the same address.",
    ),
    Reason("GATEWAY_BUSY", BackendUnavailable, True, "", "HTTP gateway: every worker and queue place is taken (503)."),
    Reason("NOT_BUILT", BackendUnavailable, False, "", "HTTP gateway: the web viewer is not built (503)."),
    # The caller.
    Reason("UNAUTHENTICATED", Unauthenticated, False, "", "Missing or wrong credentials."),
    Reason("PERMISSION_DENIED", PermissionDenied, False, "", "The caller may not do this (an admin RPC)."),
    Reason("PACS_ACCESS_DENIED", ConfigError, False, "", "The PACS refused the endpoint's credentials."),
    Reason(
        "PACS_REJECTED",
        OutputNotWritable,
        False,
        "",
        "The PACS refused to store an object (a STOW-RS 4xx, failed instances, or a store it did not confirm).",
    ),
    Reason("UPLOAD_TIMED_OUT", UploadTimedOut, True, "", "The upload stalled or passed its deadline."),
    Reason("TIMED_OUT", TimedOut, True, "", "Work did not finish within its deadline."),
    Reason("PACS_DEADLINE_EXCEEDED", TimedOut, True, "", "A PACS fetch passed its endpoint's deadline."),
    Reason("CLIENT_CANCELLED", ClientCancelled, True, "", "The client went away."),
)
"""Every reason the service returns (``docs/errors.md`` is generated from this table)."""

REASON_BY_NAME = {r.name: r for r in REASONS}
