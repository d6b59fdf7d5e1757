"""Why a PACS call failed, one type per reason, each refining a product-wide error."""

from __future__ import annotations

from medsam2.errors import (
    BackendUnavailable,
    CapacityExceeded,
    ConfigError,
    InvalidInput,
    OutputNotWritable,
    PreconditionFailed,
    TimedOut,
)


class PacsUnavailable(BackendUnavailable):
    """The PACS cannot be reached, timed out, or answered with a server error."""

    reason = "PACS_UNAVAILABLE"


class PacsTransferBroken(PacsUnavailable):
    """A response ended before it was whole (the connection closed mid-body, a multipart without its end)."""

    reason = "PACS_TRANSFER_BROKEN"


class PacsAccessDenied(ConfigError):
    """The PACS refused the credentials (HTTP 401/403): the endpoint's token is missing or wrong."""

    reason = "PACS_ACCESS_DENIED"


class PacsRejected(OutputNotWritable):
    """The PACS refused to store an object (a STOW-RS 4xx, failed instances, or instances it did not confirm)."""

    reason = "PACS_REJECTED"


class PacsRefused(PreconditionFailed):
    """The PACS refused to answer a search or retrieve (a 4xx other than 401, 403 and 404): it will not serve it."""

    reason = "PACS_REFUSED"


class PacsBadResponse(PreconditionFailed):
    """The PACS answered, but not in DICOMweb: a wrong content type, JSON that is not a list, a part not DICOM."""

    reason = "PACS_BAD_RESPONSE"


class PacsMismatch(PreconditionFailed):
    """What the PACS sent is not what was asked for: another study or series, or a series that is not one stack.

    Its ``reason`` says which check failed (``PACS_WRONG_STUDY``, ``PACS_WRONG_SERIES``,
    ``PACS_INCONSISTENT_SERIES``, ``PACS_UNLISTED_INSTANCE``, ``PACS_INCOMPLETE_SERIES``); its message names
    the attribute, never its value where that is patient data.
    """

    reason = "PACS_MISMATCH"


class PacsTooLarge(CapacityExceeded):
    """A PACS response went past its byte budget (or its page or instance bound) and was cut off."""

    reason = "PACS_BUDGET_EXCEEDED"


class PacsTimedOut(TimedOut):
    """A fetch from PACS did not finish within its endpoint's deadline."""

    reason = "PACS_DEADLINE_EXCEEDED"


class InvalidUid(InvalidInput):
    """A study or series UID is not a DICOM UID (digits and dots, at most 64 characters)."""

    reason = "INVALID_UID"
