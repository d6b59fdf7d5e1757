"""StoreResult's work: a session's SEG and SR sent to a PACS (the source's headers fetched first for an upload)."""

from __future__ import annotations

from medsam2.api.pb.medsam2.v1 import segmentation_pb2 as pb
from medsam2.pacs.service import PacsStudies
from medsam2.server.dicom_results import check_headers_match
from medsam2.server.pacs_fetches import PacsFetchGuard
from medsam2.server.result_chunks import dicom_results
from medsam2.server.sessions import SessionEntry


def store_on_pacs(
    pacs: PacsStudies,
    pacs_fetches: PacsFetchGuard,
    entry: SessionEntry,
    endpoint: str,
    context: object,
    model_sha: str,
) -> pb.StoreResultResponse:
    """Build the session's SEG and SR and store them on ``endpoint``; a refusal leaves the session as it was."""
    study = entry.study
    fetched = study.dicom is None and bool(study.sop_instance_uids and study.study_uid and study.series_uid)
    if fetched:
        # An upload that named its DICOM instances: their headers come from the PACS that holds them.
        with pacs_fetches.fetch(context) as cancel:
            source = pacs.headers(endpoint, study.study_uid, study.series_uid, study.sop_instance_uids, cancel=cancel)
        check_headers_match(study, source, entry.results.shape)
        study.dicom = source
    try:
        built = dicom_results(entry, model_sha)
    except Exception:
        if fetched:
            study.dicom = None  # a refused request leaves the session as it was
        raise
    pacs.store(endpoint, [built.seg, built.sr])
    reply = pb.StoreResultResponse(
        study_uid=str(built.seg.StudyInstanceUID),
        seg_series_uid=str(built.seg.SeriesInstanceUID),
        seg_sop_instance_uid=str(built.seg.SOPInstanceUID),
        sr_series_uid=str(built.sr.SeriesInstanceUID),
        sr_sop_instance_uid=str(built.sr.SOPInstanceUID),
    )
    return reply
