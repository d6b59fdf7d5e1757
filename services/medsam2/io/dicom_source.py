"""The DICOM objects a volume was read from, kept so results can reference them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydicom.dataset import Dataset


@dataclass(frozen=True, slots=True)
class DicomSource:
    """Headers (no pixel data) of a volume's source objects and which object each slice came from."""

    datasets: tuple[Dataset, ...]
    """Source objects: one per slice in slice order, or the single multi-frame object."""
    slice_uids: tuple[str, ...]
    """SOPInstanceUID of the object each volume slice came from."""
    frame_numbers: tuple[int, ...] | None = None
    """For a multi-frame source, the 1-based frame number of each volume slice."""
    where: str = "the DICOM source"
    """How messages name the source: the file or folder it was read from, or the PACS series."""

    def __post_init__(self) -> None:
        if not self.datasets:
            raise ValueError("a DICOM source needs at least one dataset")
        if self.frame_numbers is not None and len(self.frame_numbers) != len(self.slice_uids):
            raise ValueError(f"{len(self.frame_numbers)} frame numbers for {len(self.slice_uids)} slices")

    @property
    def study_uid(self) -> str:
        """StudyInstanceUID of the source."""
        return str(self.datasets[0].StudyInstanceUID)

    @property
    def series_uid(self) -> str:
        """SeriesInstanceUID of the source."""
        return str(self.datasets[0].SeriesInstanceUID)

    @property
    def multiframe(self) -> bool:
        """True when the slices are frames of one object."""
        return self.frame_numbers is not None
