"""Why a PACS call failed, one type per reason, each refining a product-wide error."""

from __future__ import annotations

from medsam2.errors import BackendUnavailable, ConfigError, OutputNotWritable


class PacsUnavailable(BackendUnavailable):
    """The PACS cannot be reached, timed out, or answered with a server error."""

    reason = "PACS_UNAVAILABLE"


class PacsAccessDenied(ConfigError):
    """The PACS refused the credentials (HTTP 401/403): the endpoint's token is missing or wrong."""

    reason = "PACS_ACCESS_DENIED"


class PacsRejected(OutputNotWritable):
    """The PACS refused to store an object (STOW-RS failure or warning)."""

    reason = "PACS_REJECTED"
