"""What the session service does with PACS: open a series as a study, and store results back.

A study's size is checked against the service's voxel limit from QIDO-RS
metadata alone, so an oversized series is refused before a byte of it is
downloaded; the download itself is bounded and checked (``transfer.open_series``).
Results (a SEG and its SR) are validated completely before one
STOW-RS request carries both; nothing is sent when either is invalid.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset

from medsam2.io.dicom_source import DicomSource
from medsam2.io.volumes import Volume
from medsam2.pacs.config import PacsConfig
from medsam2.pacs.errors import PacsRejected
from medsam2.pacs.http import Cancel
from medsam2.pacs.transfer import FetchLimits, SizeCheck, open_series, source_headers, store_instances

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PacsStudies:
    """The configured PACS endpoints, as the service uses them."""

    config: PacsConfig

    @property
    def endpoint_names(self) -> list[str]:
        """Names of the configured endpoints."""
        return sorted(self.config.endpoints)

    def open(
        self,
        endpoint_name: str,
        study_uid: str,
        series_uid: str,
        check_size: SizeCheck,
        *,
        cancel: Cancel | None = None,
        limits: FetchLimits | None = None,
    ) -> Volume:
        """Fetch one series (the study's only image series when ``series_uid`` is empty) as a volume."""
        endpoint = self.config.get(endpoint_name)
        return open_series(endpoint, study_uid, series_uid, check_size=check_size, cancel=cancel, limits=limits)

    def headers(
        self,
        endpoint_name: str,
        study_uid: str,
        series_uid: str,
        slice_uids: Sequence[str],
        *,
        cancel: Cancel | None = None,
    ) -> DicomSource:
        """The source headers of an uploaded study that named its UIDs, from the endpoint that holds the series."""
        return source_headers(self.config.get(endpoint_name), study_uid, series_uid, slice_uids, cancel=cancel)

    def store(self, endpoint_name: str, datasets: Sequence[Dataset]) -> list[str]:
        """STOW-RS ``datasets`` (already validated) in one request; every one must be confirmed."""
        endpoint = self.config.get(endpoint_name)
        stored = store_instances(endpoint, datasets)
        missing = [str(ds.SOPInstanceUID) for ds in datasets if str(ds.SOPInstanceUID) not in stored]
        if missing:
            raise PacsRejected(f"PACS {endpoint.name} did not confirm storing {missing}")
        return stored
