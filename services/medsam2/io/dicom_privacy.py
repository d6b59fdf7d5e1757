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
import threading
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

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


class _Secrets:
    """The identifying values of every dataset being worked on now, counted (two studies may share a value)."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()

    def add(self, values: Iterable[str]) -> None:
        self._counts.update(values)

    def remove(self, values: Iterable[str]) -> None:
        self._counts.subtract(values)
        self._counts = +self._counts  # drop the values no dataset holds any more

    def current(self) -> list[str]:
        return list(self._counts)


_SECRETS = _Secrets()


class _Redirect(logging.Handler):
    """Takes a library's records (its loggers no longer propagate) and re-logs them, redacted, at DEBUG."""

    def emit(self, record: logging.LogRecord) -> None:
        log.debug("%s %s: %s", record.name, record.levelname.lower(), redact(record.getMessage(), _SECRETS.current()))


_REDIRECT = _Redirect()


def redirect_library_loggers() -> None:
    """Route pydicom's and highdicom's log records (any level) through ``redact`` to DEBUG; idempotent."""
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        if _REDIRECT not in logger.handlers:
            logger.addHandler(_REDIRECT)
        logger.propagate = False


def _log_warning_redacted(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: object = None,
    line: str | None = None,
) -> None:
    log.debug("%s: %s", category.__name__, redact(str(message), _SECRETS.current()))


class _WarningCapture:
    """Process-wide warning capture shared by every thread working on DICOM data.

    ``warnings`` keeps its filters and ``showwarning`` in process-wide state, and ``catch_warnings`` restores what
    it saw on entry; two threads entering and leaving their own ``catch_warnings`` out of order can leave the
    capture installed for good (or another thread's removed early). So only the first of the overlapping users
    installs it and only the last removes it, under one lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._saved: warnings.catch_warnings | None = None

    def enter(self, secrets: set[str]) -> None:
        with self._lock:
            _SECRETS.add(secrets)
            if self._users == 0:
                self._saved = warnings.catch_warnings()
                self._saved.__enter__()
                warnings.simplefilter("always")
                warnings.showwarning = _log_warning_redacted
            self._users += 1

    def leave(self, secrets: set[str]) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0 and self._saved is not None:
                self._saved.__exit__(None, None, None)
                self._saved = None
            _SECRETS.remove(secrets)


_CAPTURE = _WarningCapture()


@contextmanager
def library_messages_redacted(datasets: Iterable[Dataset] = ()) -> Iterator[None]:
    """While active (in any thread), warnings go to DEBUG, redacted; pydicom's and highdicom's log records always do.

    Values are redacted against the identifying values of every dataset in use at that moment, in any thread.
    """
    secrets = identifying_values(datasets)
    redirect_library_loggers()
    _CAPTURE.enter(secrets)
    try:
        yield
    finally:
        _CAPTURE.leave(secrets)


redirect_library_loggers()
