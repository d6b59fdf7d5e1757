"""Why a study cannot be read or a segmentation cannot be written, one type per reason.

Each type derives from the product-wide error it refines (``medsam2.errors``), so the
command line's exit codes and the service's status codes need no new entries.
"""

from __future__ import annotations

from medsam2.errors import InvalidInput


class CorruptDicom(InvalidInput):
    """A file is not readable DICOM: truncated, overwritten, or not DICOM at all."""


class NotDicom(CorruptDicom):
    """A file has no DICOM preamble and does not parse as DICOM either."""


class NotAnImage(InvalidInput):
    """A DICOM object holds no image to segment (a structure set, a report, a SEG, ...)."""


class MixedSeries(InvalidInput):
    """A folder holds more than one image series and none was chosen."""


class MissingSlices(InvalidInput):
    """The slice positions of a series have a gap: one or more slices are missing."""


class IrregularStack(InvalidInput):
    """The slices do not form one regular stack (orientation, size, spacing or line differ)."""


class UnsupportedTransferSyntax(InvalidInput):
    """The pixel data is compressed in a way no installed decoder handles."""


class InvalidSegmentation(InvalidInput):
    """A segmentation object is incomplete or does not match its source; it is never stored."""
