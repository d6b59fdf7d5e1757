"""Keep patient identifiers out of logs and stderr, including what pydicom and highdicom say.

Both libraries quote the values they complain about: highdicom warns with the
patient's name when it looks malformed, pydicom with any value whose VR it
doubts.  Their warnings and log records are therefore caught while they work
on our data and re-logged at DEBUG only, with quoted values and the known
identifying values of the datasets involved replaced.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import ClassVar

from pydicom.dataset import Dataset

log = logging.getLogger(__name__)

IDENTIFYING_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientBirthName",
    "PatientMotherBirthName",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
    "AccessionNumber",
    "InstitutionName",
    "InstitutionAddress",
    "StudyID",
)
"""Attributes whose values name or point to a person; never logged."""

LIBRARY_LOGGERS = ("pydicom", "highdicom")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_REDACTED = "<redacted>"


def identifying_values(datasets: Iterable[Dataset]) -> set[str]:
    """The non-empty values of identifying attributes in ``datasets`` (and their name components)."""
    values: set[str] = set()
    for ds in datasets:
        for keyword in IDENTIFYING_KEYWORDS:
            value = ds.get(keyword)
            if value in (None, ""):
                continue
            for item in value if isinstance(value, list | tuple) else [value]:
                text = str(item).strip()
                if len(text) >= 2:
                    values.add(text)
                    values.update(part for part in re.split(r"[\^=]", text) if len(part) >= 2)
    return values


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every quoted value and every one of ``secrets`` replaced."""
    text = _QUOTED.sub(_REDACTED, text)
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, _REDACTED)
    return text


class _Redirect(logging.Handler):
    """Takes a library's records (its loggers no longer propagate) and re-logs them, redacted, at DEBUG."""

    secrets: ClassVar[set[str]] = set()

    def emit(self, record: logging.LogRecord) -> None:
        log.debug("%s %s: %s", record.name, record.levelname.lower(), redact(record.getMessage(), self.secrets))


_REDIRECT = _Redirect()


def redirect_library_loggers() -> None:
    """Route pydicom's and highdicom's log records (any level) through ``redact`` to DEBUG; idempotent."""
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        if _REDIRECT not in logger.handlers:
            logger.addHandler(_REDIRECT)
        logger.propagate = False


@contextmanager
def library_messages_redacted(datasets: Iterable[Dataset] = ()) -> Iterator[None]:
    """While active, pydicom's and highdicom's warnings go to DEBUG, redacted (their log records always do).

    ``warnings.catch_warnings`` swaps process-wide state, so concurrent threads may see each other's
    warnings; they are still only ever logged redacted at DEBUG.
    """
    secrets = identifying_values(datasets)
    redirect_library_loggers()
    _Redirect.secrets = _Redirect.secrets | secrets
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        _Redirect.secrets = _Redirect.secrets - secrets
    for warning in caught:
        log.debug("%s: %s", warning.category.__name__, redact(str(warning.message), secrets))


redirect_library_loggers()
