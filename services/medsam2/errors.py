"""Every error the product raises on purpose.

Each type says what went wrong in its name; the gRPC layer maps them to status
codes in one place and the command line maps them to exit codes.
"""

from __future__ import annotations


class Medsam2Error(Exception):
    """Base of every deliberate error; its message names the problem."""


class InvalidInput(Medsam2Error, ValueError):
    """A request, prompt, array or file argument is malformed."""


class InvalidPrompt(InvalidInput):
    """A prompt does not fit the study (box outside the slice, empty box, bad mask)."""


class PreconditionFailed(Medsam2Error):
    """The request is valid but the state does not allow it yet (e.g. propagating before any prompt)."""


class NotFound(Medsam2Error, LookupError):
    """A named thing (object, frame, session, checkpoint) does not exist."""


class CheckpointError(Medsam2Error):
    """A checkpoint file is missing, corrupt, truncated or does not match the model."""


class ConfigError(Medsam2Error):
    """A model config or a setting is wrong."""


class OutputNotWritable(Medsam2Error, OSError):
    """An output path or folder cannot be written."""


class DownloadError(Medsam2Error):
    """A published checkpoint could not be fetched or failed its checksum."""


class BackendUnavailable(Medsam2Error):
    """The inference backend (a runtime, a GPU, TensorRT, Triton) is not there or not ready."""


class CapacityExceeded(Medsam2Error):
    """A configured limit would be exceeded."""
