"""Exit codes of the ``medsam2`` command, one per error type, mapped in one place."""

from __future__ import annotations

from medsam2.errors import (
    BackendUnavailable,
    CapacityExceeded,
    CheckpointError,
    ConfigError,
    DownloadError,
    InvalidInput,
    Medsam2Error,
    NotFound,
    OutputNotWritable,
    PermissionDenied,
    PreconditionFailed,
    SessionBusy,
    Unauthenticated,
    Unsupported,
    UploadTimedOut,
)

OK = 0
FAILED_CHECK = 1
"""The command ran but its result is out of tolerance (verify, parity)."""
USAGE = 2
"""Bad flags or bad input (argparse uses 2 as well)."""

_CODES: list[tuple[type[Medsam2Error], int]] = [
    (InvalidInput, USAGE),
    (Unsupported, USAGE),
    (ConfigError, USAGE),
    (NotFound, 3),
    (CheckpointError, 4),
    (OutputNotWritable, 5),
    (BackendUnavailable, 6),
    (DownloadError, 7),
    (CapacityExceeded, 8),
    (Unauthenticated, 9),
    (PermissionDenied, 9),
    (SessionBusy, 11),
    (PreconditionFailed, 10),
    (UploadTimedOut, 6),
]


def exit_code_for(error: Medsam2Error) -> int:
    """The exit code for a deliberate error (the most specific type wins)."""
    for kind, code in _CODES:
        if isinstance(error, kind):
            return code
    return FAILED_CHECK
