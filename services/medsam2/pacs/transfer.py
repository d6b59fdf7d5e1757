"""Series in from PACS (QIDO-RS, WADO-RS) and objects out to it (STOW-RS).

``fetch_series`` is what a service session starts from and ``store_seg`` what
it exports to: a SEG is validated completely, and its source series found on
the PACS, before a single byte is sent, so nothing partial is ever stored.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

from medsam2.errors import InvalidInput, NotFound
from medsam2.io.dicom_seg import Algorithm, SegmentSpec, build_seg, validate_seg
from medsam2.io.dicom_series import Labelled, volume_from_datasets
from medsam2.io.dicom_source import DicomSource
from medsam2.io.errors import InvalidSegmentation
from medsam2.io.volumes import Volume
from medsam2.pacs.client import connect, pacs_errors
from medsam2.pacs.config import PacsEndpoint
from medsam2.pacs.errors import PacsRejected

log = logging.getLogger(__name__)

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
_UNCOMPRESSED = (("application/dicom", EXPLICIT_VR_LITTLE_ENDIAN),)
_AS_STORED = (("application/dicom", "*"),)


@dataclass(frozen=True, slots=True)
class SeriesInfo:
    """One series as QIDO-RS describes it."""

    study_uid: str
    series_uid: str
    modality: str
    description: str
    instances: int | None


def _value(item: dict, tag: str) -> str:
    values = item.get(tag, {}).get("Value") or [""]
    return str(values[0])


def list_series(endpoint: PacsEndpoint, study_uid: str | None = None) -> list[SeriesInfo]:
    """The series on ``endpoint`` (of one study when given), from QIDO-RS."""
    client = connect(endpoint)
    with pacs_errors(endpoint, "search for series"):
        found = client.search_for_series(
            study_instance_uid=study_uid,
            get_remaining=True,
            fields=["SeriesDescription", "NumberOfSeriesRelatedInstances"],
        )
    out = []
    for item in found:
        count = _value(item, "00201209")
        out.append(
            SeriesInfo(
                _value(item, "0020000D"),
                _value(item, "0020000E"),
                _value(item, "00080060"),
                _value(item, "0008103E"),
                int(count) if count.isdigit() else None,
            )
        )
    return out


def fetch_instances(endpoint: PacsEndpoint, study_uid: str, series_uid: str) -> list[Dataset]:
    """Every instance of a series over WADO-RS, uncompressed when the PACS can transcode."""
    import requests

    client = connect(endpoint)
    with pacs_errors(endpoint, f"search for series {series_uid}"):
        found = client.search_for_series(study_instance_uid=study_uid, search_filters={"SeriesInstanceUID": series_uid})
    if not found:
        raise NotFound(f"series {series_uid} of study {study_uid} is not on PACS {endpoint.name}")
    with pacs_errors(endpoint, f"retrieve series {series_uid}"):
        try:
            return client.retrieve_series(study_uid, series_uid, media_types=_UNCOMPRESSED)
        except requests.HTTPError as exc:
            # 406/400: the PACS cannot transcode; take the stored syntax and let the reader judge it.
            if exc.response is None or exc.response.status_code not in (400, 406):
                raise
            log.debug("%s cannot transcode series %s; retrieving it as stored", endpoint.name, series_uid)
            return client.retrieve_series(study_uid, series_uid, media_types=_AS_STORED)


NON_IMAGE_MODALITIES = frozenset({"SEG", "SR", "RTSTRUCT", "RTPLAN", "RTDOSE", "KO", "PR", "DOC", "REG"})
"""Series a session cannot be opened on: results, reports and presentation states beside the images."""


def choose_series(endpoint: PacsEndpoint, study_uid: str, series_uid: str = "") -> SeriesInfo:
    """The series to open: ``series_uid`` when given, else the study's only image series."""
    found = list_series(endpoint, study_uid)
    if not found:
        raise NotFound(f"study {study_uid} is not on PACS {endpoint.name}")
    if series_uid:
        for info in found:
            if info.series_uid == series_uid:
                return info
        raise NotFound(
            f"series {series_uid} is not in study {study_uid} on PACS {endpoint.name}; it has "
            + ", ".join(f"{s.series_uid} ({s.modality})" for s in found)
        )
    images = [s for s in found if s.modality.upper() not in NON_IMAGE_MODALITIES]
    if len(images) != 1:
        listing = (
            ", ".join(f"{s.series_uid} ({s.modality}, {s.instances} instances, {s.description!r})" for s in images)
            or "none"
        )
        raise InvalidInput(
            f"study {study_uid} on PACS {endpoint.name} has {len(images)} image series; "
            f"name one with its series UID: {listing}"
        )
    return images[0]


def series_shape(endpoint: PacsEndpoint, info: SeriesInfo) -> tuple[int, int, int]:
    """(planes, rows, columns) of a series from QIDO-RS metadata alone (planes: instances x frames), before download."""
    client = connect(endpoint)
    with pacs_errors(endpoint, f"search for the instances of series {info.series_uid}"):
        first = client.search_for_instances(
            study_instance_uid=info.study_uid,
            series_instance_uid=info.series_uid,
            fields=["Rows", "Columns", "NumberOfFrames"],
            limit=1,
        )
    if not first:
        raise NotFound(f"series {info.series_uid} of study {info.study_uid} has no instances on PACS {endpoint.name}")
    rows, columns = _value(first[0], "00280010"), _value(first[0], "00280011")
    frames = _value(first[0], "00280008") or "1"
    instances = info.instances
    if instances is None:
        with pacs_errors(endpoint, f"count the instances of series {info.series_uid}"):
            instances = len(
                client.search_for_instances(
                    study_instance_uid=info.study_uid, series_instance_uid=info.series_uid, get_remaining=True
                )
            )
    if not (rows.isdigit() and columns.isdigit() and frames.isdigit()):
        raise InvalidInput(
            f"PACS {endpoint.name} does not report Rows/Columns for series {info.series_uid}, so its "
            "size cannot be checked before download"
        )
    return int(instances) * int(frames), int(rows), int(columns)


def source_headers(endpoint: PacsEndpoint, study_uid: str, series_uid: str, slice_uids: Sequence[str]) -> DicomSource:
    """The headers (WADO-RS metadata, no pixels) of a series' instances, in the order ``slice_uids`` names them."""
    client = connect(endpoint)
    with pacs_errors(endpoint, f"retrieve the metadata of series {series_uid}"):
        items = client.retrieve_series_metadata(study_uid, series_uid)
    by_uid = {}
    for item in items:
        ds = Dataset.from_json(item, bulk_data_uri_handler=lambda *_: None)
        for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
            if keyword in ds:
                del ds[keyword]
        by_uid[str(ds.get("SOPInstanceUID", ""))] = ds
    missing = [uid for uid in slice_uids if uid not in by_uid]
    if missing:
        raise NotFound(
            f"{len(missing)} of the study's {len(slice_uids)} slice instances (e.g. {missing[0]}) are not "
            f"in series {series_uid} on PACS {endpoint.name}"
        )
    return DicomSource(tuple(by_uid[uid] for uid in slice_uids), tuple(slice_uids))


def fetch_series(endpoint: PacsEndpoint, study_uid: str, series_uid: str) -> Volume:
    """Fetch a series by its UIDs and read it as a volume (sorted, rescaled, with its geometry)."""
    datasets = fetch_instances(endpoint, study_uid, series_uid)
    items = [Labelled(f"instance {ds.get('SOPInstanceUID', i)}", ds) for i, ds in enumerate(datasets)]
    return volume_from_datasets(items, f"series {series_uid} on PACS {endpoint.name}", series_uid)


def store_instances(endpoint: PacsEndpoint, datasets: Sequence[Dataset]) -> list[str]:
    """STOW-RS a set of instances of one study; returns the SOPInstanceUIDs the PACS accepted."""
    if not datasets:
        return []
    studies = {str(ds.StudyInstanceUID) for ds in datasets}
    if len(studies) != 1:
        raise InvalidInput(f"one STOW-RS request stores one study; got {len(studies)}: {sorted(studies)}")
    client = connect(endpoint)
    with pacs_errors(endpoint, f"store {len(datasets)} instance(s)"):
        response = client.store_instances(list(datasets), study_instance_uid=next(iter(studies)))
    failed = response.get("FailedSOPSequence", [])
    if failed:
        reasons = "; ".join(
            f"{i.get('ReferencedSOPInstanceUID', '?')}: reason {i.get('FailureReason', '?')}" for i in failed
        )
        raise PacsRejected(f"PACS {endpoint.name} refused {len(failed)} of {len(datasets)} instance(s): {reasons}")
    return [str(i.ReferencedSOPInstanceUID) for i in response.get("ReferencedSOPSequence", [])]


def store_seg(endpoint: PacsEndpoint, seg: Dataset, source: DicomSource | None = None) -> str:
    """Validate a SEG, check its source series is on the PACS, then STOW-RS it; returns its SOPInstanceUID."""
    validate_seg(seg, source)
    series_uids = [str(s.SeriesInstanceUID) for s in seg.get("ReferencedSeriesSequence", [])]
    client = connect(endpoint)
    for series_uid in series_uids:
        with pacs_errors(endpoint, f"search for the SEG's source series {series_uid}"):
            found = client.search_for_series(
                study_instance_uid=str(seg.StudyInstanceUID), search_filters={"SeriesInstanceUID": series_uid}
            )
        if not found:
            raise InvalidSegmentation(
                f"SEG {seg.SOPInstanceUID} references series {series_uid}, which PACS {endpoint.name} does not "
                "hold; store the source series first"
            )
    stored = store_instances(endpoint, [seg])
    if str(seg.SOPInstanceUID) not in stored:
        raise PacsRejected(f"PACS {endpoint.name} did not confirm storing SEG {seg.SOPInstanceUID}")
    return str(seg.SOPInstanceUID)


def export_seg(
    endpoint: PacsEndpoint,
    masks: Mapping[int, np.ndarray],
    like: Volume,
    model_version: str,
    segments: Sequence[SegmentSpec] | None = None,
) -> str:
    """Build a SEG of ``masks`` over ``like``'s source series and store it on ``endpoint``; returns its UID."""
    seg = build_seg(masks, like, Algorithm(model_version), segments)
    return store_seg(endpoint, seg, like.dicom)
