"""A DICOM series (a folder, a file, or datasets fetched from PACS) as one volume.

Objects are grouped by SeriesInstanceUID; non-image objects (structure sets,
reports, SEGs) beside the images are skipped.  Slices are ordered along the
slice normal (see ``stacking``) and rescaled to modality units (HU for CT).
Single-frame series, one enhanced multi-frame object, and cine loops (frames
without positions, read as video) are supported.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset

from medsam2.errors import Medsam2Error, NotFound
from medsam2.io.dicom_files import (
    ObjectKind,
    check_image,
    is_enhanced,
    kind_of,
    positive_number,
    read_file,
    series_of_unreadable,
    skippable,
    sop_class_name,
)
from medsam2.io.dicom_multiframe import frame_planes, frame_rescale, frame_thickness, number_of_frames
from medsam2.io.dicom_pixels import (
    check_decodable,
    displayed_frames,
    invert,
    is_grey,
    is_monochrome1,
    modality_values,
    stored_frames,
    to_grey_uint8,
)
from medsam2.io.dicom_privacy import library_messages_redacted
from medsam2.io.dicom_source import DicomSource
from medsam2.io.errors import CorruptDicom, IrregularStack, MixedSeries, NotAnImage, NotDicom
from medsam2.io.stacking import PlaneInfo, stack_planes
from medsam2.io.volume import Volume

log = logging.getLogger(__name__)

_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
"""PixelData, FloatPixelData, DoubleFloatPixelData: dropped from the headers a volume keeps."""


@dataclass(frozen=True, slots=True)
class Labelled:
    """A dataset and how messages name it (a file path, or an instance UID for PACS)."""

    label: str
    dataset: Dataset


def read_dicom(path: Path, series_uid: str | None = None) -> Volume:
    """Read a DICOM folder (recursively) or one DICOM file as a volume."""
    path = Path(path)
    try:
        with library_messages_redacted():  # pydicom warns, quoting values, as it converts them on first use
            return _read_dicom(path, series_uid)
    except Medsam2Error:
        raise
    except (NotImplementedError, KeyError, AttributeError, TypeError, ValueError, IndexError) as exc:
        # pydicom parses elements lazily: a corrupt one surfaces wherever it is first read (found by fuzzing).
        raise CorruptDicom(f"{path}: malformed DICOM element ({type(exc).__name__}: {exc})") from exc


def _read_dicom(path: Path, series_uid: str | None) -> Volume:
    if path.is_dir():
        items = scan_folder(path, series_uid)
        if not items:
            raise NotFound(f"{path} holds no DICOM files")
    elif path.is_file():
        ds = read_file(path)
        check_image(ds, str(path))
        items = [Labelled(str(path), ds)]
    else:
        raise NotFound(f"DICOM input not found: {path}")
    return volume_from_datasets(items, str(path), series_uid)


def scan_folder(folder: Path, series_uid: str | None = None) -> list[Labelled]:
    """Every DICOM object under ``folder`` (pixel data not yet read); DICOMDIRs and non-DICOM files skipped.

    With ``series_uid``, a file that is corrupt but still says it belongs to another series is skipped too.
    """
    items = []
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        if skippable(path):
            log.debug("skipping %s: not a DICOM file by its name", path)
            continue
        try:
            ds = read_file(path)
        except NotDicom as exc:
            log.warning("skipping %s", exc)
            continue
        except CorruptDicom:
            other = series_of_unreadable(path) if series_uid is not None else None
            if other is None or other == series_uid:
                raise
            log.debug("skipping %s: unreadable, and of series %s, not the one chosen", path, other)
            continue
        if kind_of(ds) is ObjectKind.DIRECTORY:
            continue
        items.append(Labelled(str(path.relative_to(folder)), ds))
    return items


def volume_from_datasets(items: Sequence[Labelled], where: str, series_uid: str | None = None) -> Volume:
    """Build the volume of one image series out of labelled datasets."""
    # pydicom validates values as it first converts them, and its warnings quote them.
    with library_messages_redacted([item.dataset for item in items[:1]]):
        return _volume_from_datasets(items, where, series_uid)


def _volume_from_datasets(items: Sequence[Labelled], where: str, series_uid: str | None) -> Volume:
    if series_uid is not None:
        # Objects of other series are never looked at, however broken they are.
        mine = [item for item in items if str(item.dataset.get("SeriesInstanceUID", "")) == series_uid]
        if not mine:
            images = [
                item
                for item in items
                if kind_of(item.dataset) is ObjectKind.IMAGE and "SeriesInstanceUID" in item.dataset
            ]
            listing = "; ".join(_describe(uid, members) for uid, members in _by_series(images).items())
            raise NotFound(f"series {series_uid} is not in {where}; it holds: {listing or 'no image series'}")
        items = mine
    images = [item for item in items if kind_of(item.dataset) is ObjectKind.IMAGE]
    others = [item for item in items if kind_of(item.dataset) is not ObjectKind.IMAGE]
    for other in others:
        if "Image Storage" in sop_class_name(other.dataset):
            check_image(other.dataset, other.label)  # an image class without pixels: truncated, never skipped
    if not images:
        if len(others) == 1:
            check_image(others[0].dataset, others[0].label)
        kinds = Counter(sop_class_name(o.dataset) for o in others)
        found = ", ".join(f"{count} {name}" for name, count in kinds.most_common())
        raise NotAnImage(f"{where} holds no image objects, only: {found}")
    for other in others:
        log.info("%s: skipping an object of class %s", where, sop_class_name(other.dataset))
        log.debug("%s: skipped %s", where, other.label)
    for item in images:
        check_image(item.dataset, item.label)
    chosen = _choose_series(images, where, series_uid)
    multiframe = [item for item in chosen if number_of_frames(item.dataset) > 1]
    if multiframe:
        if len(chosen) > 1:
            raise IrregularStack(
                f"{where}: series {chosen[0].dataset.SeriesInstanceUID} has {len(chosen)} objects of which "
                f"{len(multiframe)} are multi-frame; read one multi-frame object at a time"
            )
        return _from_multiframe(chosen[0])
    if len(chosen) == 1 and is_enhanced(chosen[0].dataset):
        return _from_multiframe(chosen[0])  # a one-frame enhanced object keeps its geometry in functional groups
    return _from_single_frames(chosen, where)


def _describe(uid: str, members: list[Labelled]) -> str:
    ds = members[0].dataset
    description = str(ds.get("SeriesDescription", "") or "no description")
    return f"{uid} ({ds.get('Modality', '?')}, '{description}', {len(members)} object(s))"


def _by_series(images: list[Labelled]) -> dict[str, list[Labelled]]:
    series: dict[str, list[Labelled]] = {}
    for item in images:
        series.setdefault(str(item.dataset.SeriesInstanceUID), []).append(item)
    return series


def _choose_series(images: list[Labelled], where: str, series_uid: str | None) -> list[Labelled]:
    series = _by_series(images)
    if series_uid is not None:
        if series_uid not in series:
            listing = "; ".join(_describe(uid, members) for uid, members in series.items())
            raise NotFound(f"series {series_uid} is not in {where}; it holds: {listing}")
        return series[series_uid]
    if len(series) > 1:
        listing = "; ".join(_describe(uid, members) for uid, members in series.items())
        raise MixedSeries(
            f"{where} holds {len(series)} image series: {listing}. Choose one by its SeriesInstanceUID "
            "(series_uid=..., or --series on the command line), or give each series its own folder"
        )
    return next(iter(series.values()))


def _from_single_frames(items: list[Labelled], where: str) -> Volume:
    for item in items:
        check_decodable(item.dataset, item.label)  # refuse before decoding anything
    with_position = [i for i in items if "ImagePositionPatient" in i.dataset and "ImageOrientationPatient" in i.dataset]
    first = items[0].dataset
    if not with_position:
        if len(items) > 1:
            # Frames without positions (e.g. single-frame ultrasound images): a time series in instance order.
            items = sorted(items, key=lambda i: int(i.dataset.get("InstanceNumber", 0) or 0))
        return _stack_without_geometry(items, where)
    if len(with_position) != len(items):
        lacking = next(i.label for i in items if i not in with_position)
        raise IrregularStack(f"{where}: {lacking} has no ImagePositionPatient/ImageOrientationPatient but others do")
    planes = [_plane(item) for item in items]
    thickness = positive_number(first.get("SpacingBetweenSlices")) or positive_number(first.get("SliceThickness"))
    order, geometry = stack_planes(planes, where if len(items) > 1 else items[0].label, thickness)
    ordered = [items[i] for i in order]
    voxels = _to_volume_values(ordered)
    source = DicomSource(
        datasets=tuple(_header(item.dataset) for item in ordered),
        slice_uids=tuple(str(item.dataset.SOPInstanceUID) for item in ordered),
        where=where,
    )
    return Volume(voxels, geometry.spacing, "dicom", modality=_modality(first), geometry=geometry, dicom=source)


def _stack_without_geometry(items: list[Labelled], where: str) -> Volume:
    voxels = _to_volume_values(items)
    spacing = items[0].dataset.get("PixelSpacing")
    row_col = _pixel_spacing(items[0]) if spacing else (1.0, 1.0)
    source = DicomSource(
        datasets=tuple(_header(item.dataset) for item in items),
        slice_uids=tuple(str(item.dataset.SOPInstanceUID) for item in items),
        where=where,
    )
    return Volume(voxels, (1.0, *row_col), "dicom", modality=_modality(items[0].dataset), dicom=source)


def _from_multiframe(item: Labelled) -> Volume:
    from medsam2.io.video import cine_volume

    ds = item.dataset
    planes = frame_planes(ds, item.label)
    if planes is None:
        if is_enhanced(ds):
            raise IrregularStack(
                f"{item.label} is an {sop_class_name(ds)} object whose functional groups give no plane position "
                "and orientation (per-frame or shared): its frames have no geometry, and an enhanced image is not a "
                "cine loop; ask for the series with its functional groups, or as single-frame images"
            )
        volume = cine_volume(ds, item.label)
        frames = number_of_frames(ds)
        volume.dicom = DicomSource(
            (_header(ds),), (str(ds.SOPInstanceUID),) * frames, tuple(range(1, frames + 1)), where=item.label
        )
        return volume
    check_decodable(ds, item.label)
    for plane in planes:
        _check_spacing(plane.pixel_spacing, plane.label)
    order, geometry = stack_planes(planes, item.label, frame_thickness(ds))
    if not is_grey(ds):
        raise IrregularStack(f"{item.label}: a {ds.get('PhotometricInterpretation')} stack; expected grey images")
    stored = stored_frames(ds, item.label)
    slopes, intercepts = frame_rescale(ds)
    voxels = modality_values(stored[order], ds, [slopes[i] for i in order], [intercepts[i] for i in order], item.label)
    source = DicomSource(
        (_header(ds),), (str(ds.SOPInstanceUID),) * len(order), tuple(i + 1 for i in order), where=item.label
    )
    return Volume(voxels, geometry.spacing, "dicom", modality=_modality(ds), geometry=geometry, dicom=source)


def _pixel_spacing(item: Labelled) -> tuple[float, float]:
    """PixelSpacing (or ImagerPixelSpacing), refused when zero or unreadable; (1, 1) when neither is there."""
    ds = item.dataset
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    if not spacing:
        return (1.0, 1.0)
    try:
        pair = (float(spacing[0]), float(spacing[1]))
    except (TypeError, ValueError, IndexError) as exc:
        raise IrregularStack(f"{item.label}: unreadable PixelSpacing {list(spacing)!r} ({exc})") from exc
    _check_spacing(pair, item.label)
    return pair


def _check_spacing(pair: tuple[float, float], label: str) -> None:
    if not all(np.isfinite(pair)) or min(pair) <= 0:
        raise IrregularStack(
            f"{label}: PixelSpacing is {list(pair)}; a pixel needs a positive size, so neither measurements nor "
            "an output with geometry can be made; ask for the images with their spacing"
        )


def _plane(item: Labelled) -> PlaneInfo:
    ds = item.dataset
    spacing = _pixel_spacing(item)
    try:
        return PlaneInfo(
            item.label,
            tuple(float(v) for v in ds.ImagePositionPatient),  # type: ignore[arg-type]
            tuple(float(v) for v in ds.ImageOrientationPatient),
            spacing,
            (int(ds.Rows), int(ds.Columns)),
        )
    except (TypeError, ValueError) as exc:
        raise IrregularStack(f"{item.label}: unreadable plane geometry ({exc})") from exc


def _to_volume_values(items: list[Labelled]) -> np.ndarray:
    """The slices as a viewer shows them: modality values for grey images, grey uint8 for colour ones."""
    stacked = _stack_frames(items)
    datasets = [item.dataset for item in items]
    if stacked.ndim == 4 or not all(is_grey(ds) for ds in datasets):
        return to_grey_uint8(stacked)  # colour slices: grey, as for video
    values: np.ndarray | None = None
    for i, (item, ds) in enumerate(zip(items, datasets, strict=True)):
        plane = modality_values(
            stacked[i : i + 1],
            ds,
            [float(ds.get("RescaleSlope", 1) or 1)],
            [float(ds.get("RescaleIntercept", 0) or 0)],
            item.label,
            invert_monochrome1=False,
        )
        # Filled slice by slice (no list of slices beside the volume), typed as np.concatenate would type it.
        if values is None:
            values = np.empty((len(items), *plane.shape[1:]), plane.dtype)
        elif plane.dtype != values.dtype:
            values = values.astype(np.result_type(values, plane))
        values[i] = plane[0]
    del stacked
    assert values is not None  # items is never empty
    # One inversion over the whole stack, so every slice keeps the same value for the same tissue.
    return invert(values) if is_monochrome1(datasets[0]) else values


def _stack_frames(items: list[Labelled]) -> np.ndarray:
    """The first frame of each item, decoded one at a time into one array (no list of frames beside it)."""
    first = displayed_frames(items[0].dataset, items[0].label)[0]
    stacked = np.empty((len(items), *first.shape), first.dtype)
    stacked[0] = first
    del first
    for k, item in enumerate(items[1:], 1):
        frame = displayed_frames(item.dataset, item.label)[0]
        if frame.shape != stacked.shape[1:] or frame.dtype != stacked.dtype:
            # Slices that differ (rare): stack as numpy would, promoting types, and let the checks report sizes.
            rest = [frame] + [displayed_frames(i.dataset, i.label)[0] for i in items[k + 1 :]]
            return np.stack([*stacked[:k], *rest])
        stacked[k] = frame
    return stacked


def _modality(ds: Dataset) -> str | None:
    return str(ds.get("Modality", "")).upper() or None


def _header(ds: Dataset) -> Dataset:
    """A copy of ``ds`` without pixel data (read lazily, so it is never loaded here)."""
    header = Dataset()
    header.file_meta = getattr(ds, "file_meta", None) or FileMetaDataset()
    for tag in ds.keys():
        if int(tag) not in _PIXEL_TAGS:
            header.add(ds[tag])
    return header
