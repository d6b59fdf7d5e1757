"""DICOM SEG objects (highdicom) for MedSAM2 results, and their validation before they leave.

One segment per object, each with a label, a display colour (CIELab, as DICOM
stores it) and the algorithm identification: MedSAM2 and the model version the
caller states.  MedSAM2 is promptable, so segments are SEMIAUTOMATIC.  Frames
reference the source slice (or source frame) they were computed on; empty
frames are omitted.  ``validate_seg`` checks a SEG completely (structure,
references, geometry, and that it encodes and decodes) so that nothing
partial or inconsistent is ever written or stored to PACS.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from medsam2.engine.actions import CodedConcept, ObjectDescription
from medsam2.errors import InvalidInput
from medsam2.io.atomic import write_bytes_atomic
from medsam2.io.dicom_files import positive_number, sop_class_name
from medsam2.io.dicom_privacy import library_messages_redacted
from medsam2.io.dicom_source import DicomSource
from medsam2.io.errors import InvalidSegmentation
from medsam2.io.result_series import describe, seg_series_number, stamp
from medsam2.io.volumes import Volume

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
)
"""Default segment colours (sRGB), distinct on grey images; reused in turn past ten objects."""
_POSITION_TOLERANCE_MM = 0.01
_DA_FORM = re.compile(r"\d{8}")
_TM_FORM = re.compile(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?")
TYPE2_SOURCE_ATTRIBUTES = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
"""Type 2 Patient and General Study attributes the SEG copies from its source: anonymizers often drop them."""


@dataclass(frozen=True, slots=True)
class SegmentSpec:
    """One object's segment: which object, its label, its display colour and what it is."""

    obj_id: int
    label: str
    colour: tuple[int, int, int]
    category: Code = field(default_factory=lambda: codes.SCT.Tissue)
    property_type: Code = field(default_factory=lambda: codes.SCT.Tissue)

    def __post_init__(self) -> None:
        if not self.label.strip() or len(self.label) > 64:
            raise InvalidInput(f"segment label must be 1 to 64 characters, got {self.label!r}")
        if len(self.colour) != 3 or not all(isinstance(c, int) and 0 <= c <= 255 for c in self.colour):
            raise InvalidInput(f"segment colour must be three integers 0..255 (sRGB), got {self.colour!r}")


@dataclass(frozen=True, slots=True)
class Algorithm:
    """Which algorithm made the segments: name, model version, and the software that ran it."""

    version: str
    name: str = "MedSAM2"

    def __post_init__(self) -> None:
        if not self.version.strip() or len(self.version) > 64:
            raise InvalidInput(f"the model version must be 1 to 64 characters, got {self.version!r}")


def default_segments(obj_ids: Sequence[int]) -> list[SegmentSpec]:
    """'object N' labels and palette colours for the given object ids."""
    return [SegmentSpec(obj_id, f"object {obj_id}", PALETTE[i % len(PALETTE)]) for i, obj_id in enumerate(obj_ids)]


def segment_specs(described: Mapping[int, ObjectDescription], obj_ids: Sequence[int]) -> list[SegmentSpec]:
    """Each object's segment: what the prompts described (name, colour, coded type) over the defaults."""
    specs = []
    for default in default_segments(obj_ids):
        d = described.get(default.obj_id)
        if d is None:
            specs.append(default)
            continue
        specs.append(
            SegmentSpec(
                default.obj_id,
                d.label or default.label,
                d.colour or default.colour,
                _code(d.category) if d.category else default.category,
                _code(d.property_type) if d.property_type else default.property_type,
            )
        )
    return specs


def _code(concept: CodedConcept) -> Code:
    return Code(concept.value, concept.scheme, concept.meaning)


def software_version() -> str:
    """This package's version, as DICOM SoftwareVersions."""
    try:
        return f"medsam2-serving {metadata.version('medsam2-serving')}"
    except metadata.PackageNotFoundError:
        return "medsam2-serving unknown"


def build_seg(
    masks: Mapping[int, np.ndarray],
    like: Volume,
    algorithm: Algorithm,
    segments: Sequence[SegmentSpec] | None = None,
    *,
    series_number: int | None = None,
    series_description: str | None = None,
) -> Dataset:
    """A binary DICOM SEG of ``masks`` (object id -> bool [slices, rows, columns]) over ``like``'s source.

    By default the series number comes from the build time and the description names the objects and the time
    (``result_series``), so each result is its own series.
    """
    import highdicom as hd

    source = require_seg_source(like)
    obj_ids = sorted(masks)
    if not obj_ids:
        raise InvalidInput("no objects to write: a SEG needs at least one segment")
    segments = list(segments) if segments is not None else default_segments(obj_ids)
    by_id = {s.obj_id: s for s in segments}
    if sorted(by_id) != obj_ids:
        raise InvalidInput(f"segment specs are for objects {sorted(by_id)} but the masks are for {obj_ids}")
    for obj_id in obj_ids:
        if masks[obj_id].shape != like.voxels.shape:
            raise InvalidInput(
                f"object {obj_id}'s mask has shape {masks[obj_id].shape}, the volume {like.voxels.shape}"
            )
    now = datetime.now(UTC)
    if series_number is None:
        series_number = seg_series_number(now)
    if series_description is None:
        series_description = describe("MedSAM2 SEG", [by_id[i].label for i in obj_ids], stamp(now))
    pixels = np.stack([masks[i].astype(bool) for i in obj_ids], axis=-1)
    if source.multiframe:
        # highdicom wants a multi-frame source's frames in stored order.
        stored = np.zeros_like(pixels)
        stored[np.asarray(source.frame_numbers) - 1] = pixels
        pixels = stored
    identification = hd.AlgorithmIdentificationSequence(
        name=algorithm.name,
        family=codes.cid7162.ArtificialIntelligence,
        version=algorithm.version,
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=by_id[obj_id].label,
            segmented_property_category=by_id[obj_id].category,
            segmented_property_type=by_id[obj_id].property_type,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
            algorithm_identification=identification,
            tracking_id=f"object {obj_id}",
            tracking_uid=generate_uid(),
            display_color=_cielab(by_id[obj_id].colour),
        )
        for number, obj_id in enumerate(obj_ids, start=1)
    ]
    sources = [_seg_source_copy(ds, like) for ds in source.datasets]
    try:
        with library_messages_redacted(sources):
            seg = hd.seg.Segmentation(
                source_images=sources,
                pixel_array=pixels,
                segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                segment_descriptions=descriptions,
                series_instance_uid=generate_uid(),
                series_number=series_number,
                sop_instance_uid=generate_uid(),
                instance_number=1,
                manufacturer="medsam2-serving",
                manufacturer_model_name=algorithm.name,
                software_versions=software_version(),
                device_serial_number="none",
                content_label="MEDSAM2",
                content_description=f"{algorithm.name} {algorithm.version}"[:64],
            )
    except KeyError as exc:  # highdicom looks the source's IOD up by its SOP class
        name = sop_class_name(source.datasets[0])
        raise InvalidSegmentation(
            f"{source.where}: its SOP class, {name}, is one highdicom has no IOD for (retired or private), so a "
            f"SEG cannot reference it ({exc})"
        ) from exc
    except (ValueError, TypeError, AttributeError) as exc:
        raise InvalidSegmentation(f"{source.where}: highdicom cannot build a SEG over it: {exc}") from exc
    if like.geometry is None and "PatientOrientation" not in seg:
        # General Image's PatientOrientation is Type 2C: required when frames carry no plane orientation.
        seg.PatientOrientation = source.datasets[0].get("PatientOrientation") or None
    seg.SeriesDescription = series_description[:64]
    return seg


def _seg_source_copy(ds: Dataset, like: Volume) -> Dataset:
    """A copy of a source header as highdicom needs it; the source itself is never changed.

    Missing Type 2 attributes are present and empty, dates and times an old writer gave in
    ACR-NEMA form ('15:18:59') are in DICOM form or empty, and a missing slice thickness is the
    computed one.
    """
    copy = Dataset()
    copy.file_meta = getattr(ds, "file_meta", None) or pydicom.dataset.FileMetaDataset()
    for tag in ds.keys():
        copy.add(ds[tag])
    for keyword in TYPE2_SOURCE_ATTRIBUTES:
        if keyword not in copy:
            setattr(copy, keyword, None)
    for keyword, form in (("StudyDate", "DA"), ("StudyTime", "TM"), ("PatientBirthDate", "DA")):
        copy[keyword].value = _dicom_date_time(copy[keyword].value, form)
    _add_slice_thickness(copy, like)
    return copy


def _dicom_date_time(value: object, form: str) -> str | None:
    """A DA/TM value in DICOM form ('19941105', '151859.5'), or None (empty) when it cannot be one."""
    from pydicom.valuerep import DA, TM

    if value in (None, ""):
        return None
    text = str(value).strip()
    pattern = _DA_FORM if form == "DA" else _TM_FORM
    for candidate in (text, text.replace(":", "") if form == "TM" else text.replace(".", "").replace("-", "")):
        if not pattern.fullmatch(candidate):
            continue
        try:
            (DA if form == "DA" else TM)(candidate)
        except (ValueError, TypeError):
            continue
        return candidate
    return None


def _add_slice_thickness(copy: Dataset, like: Volume) -> None:
    """Give the copy a SliceThickness (highdicom copies it into the SEG) when the source states none."""
    from copy import deepcopy

    thickness = _slice_thickness(like)
    if "SharedFunctionalGroupsSequence" in copy:
        shared = copy.SharedFunctionalGroupsSequence[0]
        measures = shared.get("PixelMeasuresSequence")
        if measures and positive_number(measures[0].get("SliceThickness")) is None:
            copy.SharedFunctionalGroupsSequence = deepcopy(copy.SharedFunctionalGroupsSequence)
            copy.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].SliceThickness = thickness
        return
    if positive_number(copy.get("SliceThickness")) is None and (like.geometry is not None or "PixelSpacing" in copy):
        copy.SliceThickness = thickness


def _slice_thickness(like: Volume) -> float:
    """The source's SliceThickness when it states a positive one, else the slice spacing of the volume."""
    from medsam2.io.dicom_multiframe import frame_thickness

    assert like.dicom is not None
    stated = frame_thickness(like.dicom.datasets[0])
    return stated if stated is not None and stated > 0 else float(like.spacing[0])


def require_seg_source(like: Volume) -> DicomSource:
    """The volume's DICOM source, or ``InvalidInput`` saying why no SEG can be placed on it."""
    if like.dicom is None:
        raise InvalidInput(
            f"a DICOM SEG references its source images, but this volume was read from {like.source_format}; "
            "write NIfTI (.nii.gz) or .npz instead, or read the study from DICOM"
        )
    source = like.dicom
    alternative = "write .nii.gz, .npz or a .gif overlay instead"
    if len(source.slice_uids) > 1 and like.geometry is None:
        # A SEG of many frames places each one in patient space; without positions it cannot.
        raise InvalidInput(
            f"{source.where}: its {len(source.slice_uids)} frames have no patient geometry (no image position and "
            f"orientation: {like.source_format}), so a multi-frame DICOM SEG cannot be placed on them; {alternative}"
        )
    if len(source.slice_uids) > 1 and "FrameOfReferenceUID" not in source.datasets[0]:
        raise InvalidInput(
            f"{source.where}: it has no FrameOfReferenceUID, which a multi-frame DICOM SEG must share with its "
            f"source; {alternative}"
        )
    return source


def check_seg_possible(like: Volume, algorithm: Algorithm | None = None) -> None:
    """Build and validate a probe SEG (one pixel per slice) now, so a SEG never fails after inference.

    Raises ``InvalidInput`` naming the source and suggesting another output; nothing is written.
    """
    source = require_seg_source(like)
    probe = np.zeros(like.voxels.shape, bool)
    probe[:, 0, 0] = True  # every frame present, as in the largest possible result
    try:
        seg = build_seg({1: probe}, like, algorithm or Algorithm("probe"))
        validate_seg(seg, source)
    except InvalidSegmentation as exc:
        raise InvalidSegmentation(
            f"a DICOM SEG cannot be written for {source.where}: {_without_where(str(exc), source.where)}; "
            "write .nii.gz or .npz instead"
        ) from exc


def _without_where(message: str, where: str) -> str:
    prefix = f"{where}: "
    return message.removeprefix(prefix)


def _cielab(rgb: tuple[int, int, int]):  # noqa: ANN202
    import highdicom as hd

    r, g, b = (_linear(c / 255.0) for c in rgb)
    # sRGB (D65) -> XYZ, Bradford-adapted to D50, which DICOM's CIELab (the ICC PCS) uses.
    x = 0.4360747 * r + 0.3850649 * g + 0.1430804 * b
    y = 0.2225045 * r + 0.7168786 * g + 0.0606169 * b
    z = 0.0139322 * r + 0.0971045 * g + 0.7141733 * b
    fx, fy, fz = (_lab_f(v) for v in (x / 0.96422, y / 1.0, z / 0.82521))
    return hd.color.CIELabColor(116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz))


def _linear(c: float) -> float:
    return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4


def _lab_f(t: float) -> float:
    return t ** (1 / 3) if t > (6 / 29) ** 3 else t / (3 * (6 / 29) ** 2) + 4 / 29


def validate_seg(seg: Dataset, source: DicomSource | None = None) -> bytes:
    """Check a SEG completely and return its encoded bytes; raise ``InvalidSegmentation`` naming the fault."""
    import highdicom as hd

    if str(seg.get("SOPClassUID", "")) != SEGMENTATION_STORAGE:
        raise InvalidSegmentation(f"not a Segmentation object: SOPClassUID is {seg.get('SOPClassUID')!r}")
    for keyword in (
        "SOPInstanceUID",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SegmentSequence",
        "PerFrameFunctionalGroupsSequence",
        "PixelData",
    ):
        if keyword not in seg:
            raise InvalidSegmentation(f"SEG {seg.get('SOPInstanceUID', '?')} lacks {keyword}")
    frames = int(seg.get("NumberOfFrames", 0) or 0)
    per_frame = seg.PerFrameFunctionalGroupsSequence
    if frames < 1 or frames != len(per_frame):
        raise InvalidSegmentation(f"SEG says NumberOfFrames {frames} but has {len(per_frame)} per-frame items")
    expected_bytes = (int(seg.Rows) * int(seg.Columns) * frames + 7) // 8
    if str(seg.get("SegmentationType")) == "BINARY" and len(seg.PixelData) < expected_bytes:
        raise InvalidSegmentation(
            f"SEG pixel data has {len(seg.PixelData)} bytes, {frames} binary frames need {expected_bytes}"
        )
    numbers = {int(s.SegmentNumber) for s in seg.SegmentSequence}
    referenced = {
        str(i.ReferencedSOPInstanceUID)
        for s in seg.get("ReferencedSeriesSequence", [])
        for i in s.get("ReferencedInstanceSequence", [])
    }
    shared = seg.get("SharedFunctionalGroupsSequence") or [Dataset()]
    for index, item in enumerate(per_frame, start=1):
        _check_frame(item, shared[0], index, numbers, referenced, source)
    if source is not None and str(seg.StudyInstanceUID) != source.study_uid:
        raise InvalidSegmentation(
            f"SEG belongs to study {seg.StudyInstanceUID} but its source series is in study {source.study_uid}"
        )
    source_frame = str(source.datasets[0].get("FrameOfReferenceUID", "")) if source is not None else ""
    if source_frame and str(seg.get("FrameOfReferenceUID", "")) != source_frame:
        raise InvalidSegmentation(
            f"SEG has FrameOfReferenceUID {seg.get('FrameOfReferenceUID')!r} but its source has {source_frame}"
        )
    buffer = io.BytesIO()
    try:
        with library_messages_redacted([seg]):
            seg.save_as(buffer, enforce_file_format=True)
            decoded = hd.seg.Segmentation.from_dataset(pydicom.dcmread(io.BytesIO(buffer.getvalue())))
            decoded.get_source_image_uids()
    except Exception as exc:  # any failure to encode or decode means the object must not leave
        raise InvalidSegmentation(f"SEG {seg.SOPInstanceUID} does not survive encoding and decoding: {exc}") from exc
    return buffer.getvalue()


def _check_frame(
    item: Dataset, shared: Dataset, index: int, numbers: set[int], referenced: set[str], source: DicomSource | None
) -> None:
    # A macro that is the same for every frame (e.g. the only segment) sits in the shared groups.
    def macro(keyword: str) -> Dataset:
        return (item.get(keyword) or shared.get(keyword))[0]

    try:
        number = int(macro("SegmentIdentificationSequence").ReferencedSegmentNumber)
        source_item = macro("DerivationImageSequence").SourceImageSequence[0]
        uid = str(source_item.ReferencedSOPInstanceUID)
    except (AttributeError, IndexError, TypeError) as exc:
        raise InvalidSegmentation(f"SEG frame {index} lacks its segment number or source image reference") from exc
    if number not in numbers:
        raise InvalidSegmentation(f"SEG frame {index} refers to segment {number}, which the SEG does not define")
    if referenced and uid not in referenced:
        raise InvalidSegmentation(f"SEG frame {index} references {uid}, which its ReferencedSeriesSequence omits")
    if source is None:
        return
    if uid not in source.slice_uids:
        raise InvalidSegmentation(f"SEG frame {index} references {uid}, which is not in series {source.series_uid}")
    if source.multiframe or "PlanePositionSequence" not in item:
        return
    position = np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, float)
    expected = np.asarray(source.datasets[source.slice_uids.index(uid)].ImagePositionPatient, float)
    if np.max(np.abs(position - expected)) > _POSITION_TOLERANCE_MM:
        raise InvalidSegmentation(
            f"SEG frame {index} is at {position.tolist()} but its source slice {uid} is at {expected.tolist()}"
        )


def write_seg(path: Path, seg: Dataset, source: DicomSource | None = None) -> Path:
    """Validate a SEG and write it atomically (a partial file never has the final name)."""
    return write_bytes_atomic(path, validate_seg(seg, source))
