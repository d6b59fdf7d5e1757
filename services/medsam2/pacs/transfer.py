"""Series in from PACS (QIDO-RS, WADO-RS) and objects out to it (STOW-RS).

``open_series`` is what a service session starts from and ``store_seg`` what
it exports to.  Nothing a PACS sends is trusted (see ``pacs.http``): UIDs are
checked before any request, every search is bounded in pages, results and
time, the WADO-RS body has a byte budget fixed from QIDO-RS's announcement and
the service's limits before it is asked for, instances are parsed as they
stream and checked to belong to the study and series asked for.  A SEG is
validated completely, and its source series found on the PACS, before a single
byte is sent, so nothing partial is ever stored.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset

from medsam2.errors import InvalidInput, NotFound
from medsam2.io.dicom_seg import validate_seg
from medsam2.io.dicom_series import Labelled, volume_from_datasets
from medsam2.io.dicom_source import DicomSource
from medsam2.io.errors import InvalidSegmentation
from medsam2.io.volumes import Volume
from medsam2.pacs import multipart
from medsam2.pacs.client import connect, pacs_errors
from medsam2.pacs.config import PacsEndpoint
from medsam2.pacs.errors import InvalidUid, PacsBadResponse, PacsMismatch, PacsRejected, PacsTooLarge
from medsam2.pacs.http import Cancel, Transfer
from medsam2.pacs.instances import SeriesCheck, declared_pixel_bytes, read_part

log = logging.getLogger(__name__)

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
_UNCOMPRESSED = f'multipart/related; type="application/dicom"; transfer-syntax={EXPLICIT_VR_LITTLE_ENDIAN}'
_AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
MAX_BYTES_PER_VOXEL = 8
"""Allowed per voxel when QIDO-RS does not say (64-bit floats; 16-bit RGB takes 6)."""
HEADER_ALLOWANCE = 64 * 1024
"""Allowed per instance beyond its pixels: its header, multipart framing, encapsulation."""
SLACK_BYTES = 1 << 20
"""Allowed per fetch beyond the announced size."""
QIDO_ITEM_BYTES = 32 * 1024
"""Allowed per QIDO-RS result (a few attributes; a PACS that returns everything sends about 2 KB)."""
SERIES_FIELDS = ("SeriesDescription", "NumberOfSeriesRelatedInstances")
INSTANCE_FIELDS = ("Rows", "Columns", "NumberOfFrames", "BitsAllocated", "SamplesPerPixel")


@dataclass(frozen=True, slots=True)
class FetchLimits:
    """What a fetch may take at most, from the service's session limits, fixed before the first request."""

    max_voxels: int = 512 * 512 * 1024
    """Voxels of one study (the service's --max-study-voxels)."""
    max_instances: int = 4096
    """Instances of one series (every instance is at least one slice)."""

    @property
    def max_bytes(self) -> int:
        """The most any series' WADO-RS body may hold, whatever QIDO-RS announced."""
        return self.max_voxels * MAX_BYTES_PER_VOXEL + self.max_instances * HEADER_ALLOWANCE + SLACK_BYTES


@dataclass(frozen=True, slots=True)
class SeriesInfo:
    """One series as QIDO-RS describes it."""

    study_uid: str
    series_uid: str
    modality: str
    description: str
    instances: int | None


@dataclass(frozen=True, slots=True)
class SeriesListing:
    """A series' instances as QIDO-RS lists them: their UIDs and the size they announce."""

    sop_uids: tuple[str, ...]
    rows: int
    columns: int
    planes: int
    """Instances x frames."""
    bytes_per_voxel: int

    @property
    def shape(self) -> tuple[int, int, int]:
        """(planes, rows, columns)."""
        return self.planes, self.rows, self.columns

    def budget(self, limits: FetchLimits) -> int:
        """Bytes the WADO-RS body (and what it inflates or decodes to) may hold: the announcement plus room."""
        pixels = self.planes * self.rows * self.columns * self.bytes_per_voxel
        announced = pixels + pixels // 8 + len(self.sop_uids) * HEADER_ALLOWANCE + SLACK_BYTES
        return min(announced, limits.max_bytes)


SizeCheck = Callable[[tuple[int, int, int]], None]
"""Raises when a study of that shape (slices, rows, columns) may not be opened."""


def check_uid(uid: str, what: str) -> str:
    """``uid`` if it is a DICOM UID (digits and dots, at most 64 characters), else ``InvalidUid``."""
    if len(uid) > 64 or not _UID.match(uid):
        shown = uid if len(uid) <= 80 and uid.isprintable() else f"{uid[:40]!r}..."
        raise InvalidUid(
            f"{what} {shown!r} is not a DICOM UID (digits and dots, at most 64 characters)",
            field=what.replace(" ", "_"),
        )
    return uid


def _value(item: dict, tag: str) -> str:
    entry = item.get(tag)
    values = (entry.get("Value") if isinstance(entry, dict) else None) or [""]
    return str(values[0]) if isinstance(values, list) else ""


def _count(item: dict, tag: str) -> int | None:
    value = _value(item, tag)
    return int(value) if value.isdigit() else None


def _search(
    transfer: Transfer, path: str, query: Mapping[str, str], *, max_results: int, key: str, what: str
) -> list[dict]:
    """Every result of a QIDO-RS search, page by page (``limit``/``offset``), bounded in pages and results."""
    endpoint = transfer.endpoint
    size = endpoint.qido_page_size
    found: list[dict] = []
    keys: set[str] = set()
    for page in range(endpoint.max_qido_pages):
        items = transfer.get_json(
            path,
            query={**query, "limit": size, "offset": page * size},
            budget=max(SLACK_BYTES, size * QIDO_ITEM_BYTES),
            action=f"search for {what}",
        )
        for item in items:
            uid = _value(item, key)
            if uid in keys:
                raise PacsBadResponse(f"PACS {endpoint.name} listed one of the {what} twice while paging")
            keys.add(uid)
        found += items
        if len(found) > max_results:
            raise PacsTooLarge(
                f"PACS {endpoint.name}: the search for {what} found more than {max_results} results, more than "
                "this service opens (--max-study-voxels)",
                reason="PACS_TOO_MANY_RESULTS",
            )
        if len(items) != size:
            return found  # a short page is the last; so is a PACS that ignored the limit and sent more
    raise PacsTooLarge(
        f"PACS {endpoint.name} was still paging through {what} after {endpoint.max_qido_pages} pages of {size} "
        "(the endpoint's max_qido_pages)",
        reason="PACS_TOO_MANY_PAGES",
    )


def _series_info(item: dict) -> SeriesInfo:
    return SeriesInfo(
        _value(item, "0020000D"),
        _value(item, "0020000E"),
        _value(item, "00080060"),
        _value(item, "0008103E"),
        _count(item, "00201209"),
    )


def _series(transfer: Transfer, study_uid: str | None, series_uid: str = "") -> list[SeriesInfo]:
    query = {"includefield": ",".join(SERIES_FIELDS)}
    if series_uid:
        query["SeriesInstanceUID"] = series_uid
    path = f"/studies/{check_uid(study_uid, 'study UID')}/series" if study_uid else "/series"
    endpoint = transfer.endpoint
    # Series are bounded by the pages alone: how many a study holds says nothing of its size.
    bound = endpoint.qido_page_size * endpoint.max_qido_pages
    items = _search(transfer, path, query, max_results=bound, key="0020000E", what="series")
    found = [_series_info(item) for item in items]
    where = f"PACS {transfer.endpoint.name}"
    for info in found:
        if study_uid and info.study_uid and info.study_uid != study_uid:
            log.warning("%s: a series listed for a study belongs to another (check PACS_WRONG_STUDY)", where)
            raise PacsMismatch(
                f"{where} listed a series of another study than the one asked for", reason="PACS_WRONG_STUDY"
            )
        if series_uid and info.series_uid != series_uid:
            log.warning("%s: the series search returned another series (check PACS_WRONG_SERIES)", where)
            raise PacsMismatch(f"{where} answered a search for one series with another", reason="PACS_WRONG_SERIES")
    return found


def list_series(
    endpoint: PacsEndpoint, study_uid: str | None = None, *, cancel: Cancel | None = None
) -> list[SeriesInfo]:
    """The series on ``endpoint`` (of one study when given), from QIDO-RS."""
    with Transfer(endpoint, cancel) as transfer:
        return _series(transfer, study_uid)


NON_IMAGE_MODALITIES = frozenset({"SEG", "SR", "RTSTRUCT", "RTPLAN", "RTDOSE", "KO", "PR", "DOC", "REG"})
"""Series a session cannot be opened on: results, reports and presentation states beside the images."""


def _choose(found: list[SeriesInfo], endpoint: PacsEndpoint, study_uid: str, series_uid: str) -> SeriesInfo:
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


def list_instances(transfer: Transfer, info: SeriesInfo, limits: FetchLimits) -> SeriesListing:
    """The instances of a series and the size they announce, from QIDO-RS alone (before any download)."""
    endpoint = transfer.endpoint
    items = _search(
        transfer,
        f"/studies/{info.study_uid}/series/{info.series_uid}/instances",
        {"includefield": ",".join(INSTANCE_FIELDS)},
        # Room past the limit, so a series a little too large gets the size check's own message, not this bound.
        max_results=2 * limits.max_instances + endpoint.qido_page_size,
        key="00080018",
        what=f"the instances of series {info.series_uid}",
    )
    if not items:
        raise NotFound(f"series {info.series_uid} of study {info.study_uid} has no instances on PACS {endpoint.name}")
    first = items[0]
    rows, columns = _count(first, "00280010"), _count(first, "00280011")
    if not rows or not columns:
        raise InvalidInput(
            f"PACS {endpoint.name} does not report Rows/Columns for series {info.series_uid}, so its "
            "size cannot be checked before download"
        )
    planes = sum(_count(item, "00280008") or 1 for item in items)
    bits, samples = _count(first, "00280100"), _count(first, "00280002")
    per_voxel = ((bits + 7) // 8) * (samples or 1) if bits else MAX_BYTES_PER_VOXEL
    uids = tuple(_value(item, "00080018") for item in items)
    return SeriesListing(uids, rows, columns, planes, max(1, min(per_voxel, MAX_BYTES_PER_VOXEL)))


def stream_instances(
    transfer: Transfer, info: SeriesInfo, listing: SeriesListing, limits: FetchLimits
) -> Iterator[Dataset]:
    """The instances of a series over WADO-RS, parsed and checked one by one as they arrive."""
    endpoint = transfer.endpoint
    budget = listing.budget(limits)
    where = f"series {info.series_uid} on PACS {endpoint.name}"
    action = f"retrieve series {info.series_uid}"
    path = f"/studies/{info.study_uid}/series/{info.series_uid}"
    response = transfer.get(path, accept=_UNCOMPRESSED, budget=budget, action=action, allow=(400, 406))
    if response.status != 200:
        # 406/400: the PACS cannot transcode; take the stored syntax and let the reader judge it.
        response.close()
        log.debug("%s cannot transcode series %s; retrieving it as stored", endpoint.name, info.series_uid)
        response = transfer.get(path, accept=_AS_STORED, budget=budget, action=action)
    check = SeriesCheck(
        where, info.study_uid, info.series_uid, frozenset(listing.sop_uids), (listing.rows, listing.columns)
    )
    decoded = 0
    with response:
        boundary = multipart.boundary_of(response.header("Content-Type"), f"PACS {endpoint.name} answering {action}")
        for index, part in enumerate(multipart.parts(response.chunks(), boundary, where)):
            if part.content_type not in ("application/dicom", ""):
                raise PacsBadResponse(f"{where}: part {index + 1} is {part.content_type!r}, not application/dicom")
            label = f"instance {index + 1} of {where}"
            ds = read_part(part.body, label, max(0, budget - decoded))
            del part
            check.check(ds, index)
            # What its pixels decode to, from its own header, counted before anything is decoded.
            decoded += declared_pixel_bytes(ds)
            if decoded > budget:
                raise PacsTooLarge(
                    f"{where}: the instances' headers add up to more than {budget} bytes of pixels, more than "
                    "QIDO-RS announced (the fetch's budget)"
                )
            yield ds
    check.finish()


def fetch_instances(
    endpoint: PacsEndpoint,
    study_uid: str,
    series_uid: str,
    *,
    cancel: Cancel | None = None,
    limits: FetchLimits | None = None,
    check_size: SizeCheck | None = None,
) -> list[Dataset]:
    """Every instance of a series over WADO-RS, uncompressed when the PACS can transcode, each checked."""
    limits = limits or FetchLimits()
    check_uid(study_uid, "study UID")
    check_uid(series_uid, "series UID")
    with Transfer(endpoint, cancel) as transfer:
        found = _series(transfer, study_uid, series_uid)
        if not found:
            raise NotFound(f"series {series_uid} of study {study_uid} is not on PACS {endpoint.name}")
        return _fetch(transfer, found[0], limits, check_size)


def _fetch(transfer: Transfer, info: SeriesInfo, limits: FetchLimits, check_size: SizeCheck | None) -> list[Dataset]:
    listing = list_instances(transfer, info, limits)
    if check_size is not None:
        check_size(listing.shape)  # refused on QIDO-RS's word before a byte of pixels is asked for
    return list(stream_instances(transfer, info, listing, limits))


def open_series(
    endpoint: PacsEndpoint,
    study_uid: str,
    series_uid: str = "",
    *,
    check_size: SizeCheck | None = None,
    cancel: Cancel | None = None,
    limits: FetchLimits | None = None,
) -> Volume:
    """Choose (the study's only image series when ``series_uid`` is empty), fetch and read a series as a volume,
    all within one deadline."""
    limits = limits or FetchLimits()
    check_uid(study_uid, "study UID")
    if series_uid:
        check_uid(series_uid, "series UID")
    with Transfer(endpoint, cancel) as transfer:
        info = _choose(_series(transfer, study_uid), endpoint, study_uid, series_uid)
        datasets = _fetch(transfer, info, limits, check_size)
        transfer.check()
    return _volume(datasets, endpoint, info.series_uid)


def _volume(datasets: list[Dataset], endpoint: PacsEndpoint, series_uid: str) -> Volume:
    items = [Labelled(f"instance {ds.get('SOPInstanceUID', i)}", ds) for i, ds in enumerate(datasets)]
    del datasets
    return volume_from_datasets(items, f"series {series_uid} on PACS {endpoint.name}", series_uid)


def source_headers(
    endpoint: PacsEndpoint, study_uid: str, series_uid: str, slice_uids: Sequence[str], *, cancel: Cancel | None = None
) -> DicomSource:
    """The headers (WADO-RS metadata, no pixels) of a series' instances, in the order ``slice_uids`` names them."""
    check_uid(study_uid, "study UID")
    check_uid(series_uid, "series UID")
    budget = (len(slice_uids) + 16) * 4 * HEADER_ALLOWANCE + SLACK_BYTES
    with Transfer(endpoint, cancel) as transfer:
        items = transfer.get_json(
            f"/studies/{study_uid}/series/{series_uid}/metadata",
            budget=budget,
            action=f"retrieve the metadata of series {series_uid}",
        )
    by_uid = {}
    check = SeriesCheck(f"series {series_uid} on PACS {endpoint.name}", study_uid, series_uid, frozenset())
    for index, item in enumerate(items):
        try:
            ds = Dataset.from_json(item, bulk_data_uri_handler=lambda *_: None)
        except Exception as exc:  # pydicom raises many types for malformed JSON models
            raise PacsBadResponse(
                f"PACS {endpoint.name}: the metadata of series {series_uid} is not a DICOM JSON model "
                f"({type(exc).__name__})"
            ) from exc
        for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
            if keyword in ds:
                del ds[keyword]
        check.check(ds, index)
        by_uid[str(ds.get("SOPInstanceUID", ""))] = ds
    missing = [uid for uid in slice_uids if uid not in by_uid]
    if missing:
        raise NotFound(
            f"{len(missing)} of the study's {len(slice_uids)} slice instances (e.g. {missing[0]}) are not "
            f"in series {series_uid} on PACS {endpoint.name}"
        )
    return DicomSource(tuple(by_uid[uid] for uid in slice_uids), tuple(slice_uids))


def fetch_series(
    endpoint: PacsEndpoint,
    study_uid: str,
    series_uid: str,
    *,
    cancel: Cancel | None = None,
    limits: FetchLimits | None = None,
) -> Volume:
    """Fetch a series by its UIDs and read it as a volume (sorted, rescaled, with its geometry)."""
    datasets = fetch_instances(endpoint, study_uid, series_uid, cancel=cancel, limits=limits)
    return _volume(datasets, endpoint, series_uid)


def store_instances(endpoint: PacsEndpoint, datasets: Sequence[Dataset]) -> list[str]:
    """STOW-RS a set of instances of one study; returns the SOPInstanceUIDs the PACS accepted."""
    if not datasets:
        return []
    studies = {str(ds.StudyInstanceUID) for ds in datasets}
    if len(studies) != 1:
        raise InvalidInput(f"one STOW-RS request stores one study; got {len(studies)}: {sorted(studies)}")
    client = connect(endpoint)
    with pacs_errors(endpoint, f"store {len(datasets)} instance(s)", storing=True):
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
        with pacs_errors(endpoint, f"search for the SEG's source series {series_uid}", storing=False):
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
