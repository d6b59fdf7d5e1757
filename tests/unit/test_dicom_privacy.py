"""Library warnings during DICOM work: redacted at DEBUG, and the capture safe when threads overlap."""

from __future__ import annotations

import logging
import threading
import warnings

import pytest
from pydicom.dataset import Dataset

from medsam2.io.dicom_privacy import library_messages_redacted


def _patient(name: str) -> Dataset:
    ds = Dataset()
    ds.PatientName = name
    ds.PatientID = "MRN-12345"
    return ds


def test_warnings_are_logged_redacted(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="medsam2.io.dicom_privacy"):
        with library_messages_redacted([_patient("Doe^Jane")]):
            warnings.warn("bad value for Doe^Jane, id MRN-12345", UserWarning, stacklevel=1)
    text = caplog.text
    assert "UserWarning" in text and "Doe" not in text and "MRN-12345" not in text


def test_overlapping_threads_leave_the_process_as_they_found_it() -> None:
    """A enters, B enters, A leaves, B leaves: out of order, which per-thread catch_warnings gets wrong."""
    before_show, before_filters = warnings.showwarning, list(warnings.filters)
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen: list[str] = []

    def first() -> None:
        with library_messages_redacted([_patient("Roe^Ann")]):
            a_in.set()
            b_in.wait(5)
        a_out.set()

    def second() -> None:
        a_in.wait(5)
        with library_messages_redacted([_patient("Poe^Ed")]):
            b_in.set()
            a_out.wait(5)
            # A has left, B has not: the capture must still be on for B.
            seen.append(warnings.showwarning.__name__)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen == ["_log_warning_redacted"]
    assert warnings.showwarning is before_show and warnings.filters == before_filters
