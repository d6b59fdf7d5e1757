"""A session's DICOM results: one SEG (a segment per object) and the TID 1500 SR that measures it.

Both are built together, so the SR always references the SEG that goes with
it, and both are validated (they encode, decode, and reference the source
series slice by slice) before anyone sees them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

from medsam2.errors import PreconditionFailed
from medsam2.io.dicom_seg import Algorithm, SegmentSpec, build_seg, default_segments, validate_seg
from medsam2.io.dicom_source import DicomSource
from medsam2.io.dicom_sr import build_measurement_report, encode_report
from medsam2.io.measurements import measure_all
from medsam2.io.volumes import Volume
from medsam2.server.sessions import StudyInfo

_POSITION_TOLERANCE_MM = 0.01


@dataclass(frozen=True, slots=True)
class DicomResults:
    """A SEG and its SR, encoded."""

    seg: Dataset
    sr: Dataset
    seg_bytes: bytes
    sr_bytes: bytes


def require_dicom_source(study: StudyInfo) -> None:
    """``PreconditionFailed`` saying why a study has no DICOM results."""
    if study.dicom is not None:
        return
    if study.sop_instance_uids:
        raise PreconditionFailed(
            "this study was uploaded with DICOM UIDs but without its source headers (patient and study modules), "
            "so a SEG or SR would not file under the right patient: StoreResult to the PACS that holds the series "
            "(it reads the headers from there), or open the study from PACS (StudyHeader.pacs)",
            reason="DICOM_HEADERS_MISSING",
        )
    raise PreconditionFailed(
        "this study was uploaded without DICOM identity (no study, series or SOP instance UIDs), so there is no "
        "source series for a SEG or SR to reference: open the study from PACS (StudyHeader.pacs), or fetch NIfTI",
        reason="NO_DICOM_SOURCE",
    )


def check_headers_match(study: StudyInfo, source: DicomSource, shape: tuple[int, int, int]) -> None:
    """``PreconditionFailed`` unless PACS headers describe the uploaded voxels (size, and positions when known)."""
    first = source.datasets[0]
    rows, columns = int(first.get("Rows", 0)), int(first.get("Columns", 0))
    if (rows, columns) != shape[1:]:
        raise PreconditionFailed(
            f"series {source.series_uid} on PACS has {rows}x{columns} slices, the upload "
            f"{shape[1]}x{shape[2]}: the UIDs in the header do not describe these voxels",
            reason="DICOM_SOURCE_MISMATCH",
        )
    if study.geometry is None:
        return
    for k, ds in enumerate(source.datasets):
        position = np.asarray(ds.get("ImagePositionPatient", [np.nan] * 3), float)
        error = float(np.max(np.abs(position - study.geometry.position(k))))
        if not error <= _POSITION_TOLERANCE_MM:
            raise PreconditionFailed(
                f"slice {k} ({source.slice_uids[k]}) lies at {position.tolist()} on PACS but at "
                f"{study.geometry.position(k).tolist()} in the upload: the header's UIDs or geometry are wrong",
                reason="DICOM_SOURCE_MISMATCH",
            )


def build_dicom_results(
    masks: Mapping[int, np.ndarray],
    study: StudyInfo,
    shape: tuple[int, int, int],
    segments: Mapping[int, SegmentSpec],
    model_version: str,
) -> DicomResults:
    """Build and validate the SEG and SR of ``masks`` over the study's source series."""
    require_dicom_source(study)
    if not masks:
        raise PreconditionFailed(
            "no segmentation yet: add a prompt and propagate before asking for DICOM results", reason="NO_MASKS"
        )
    defaults = {s.obj_id: s for s in default_segments(sorted(masks))}
    specs = [segments.get(obj_id, defaults[obj_id]) for obj_id in sorted(masks)]
    like = Volume(
        np.broadcast_to(np.uint8(0), shape),
        study.spacing,
        "dicom",
        modality=study.modality or None,
        geometry=study.geometry,
        dicom=study.dicom,
    )
    seg = build_seg(masks, like, Algorithm(model_version), specs)
    seg_bytes = validate_seg(seg, study.dicom)
    measured = measure_all(masks, study.spacing, {s.obj_id: s.label for s in specs})
    assert study.dicom is not None  # require_dicom_source refused a study without one
    sr = build_measurement_report(seg, measured, model_version=model_version, source=study.dicom)
    return DicomResults(seg, sr, seg_bytes, encode_report(sr))
