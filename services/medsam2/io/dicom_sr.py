"""DICOM SR measurement reports (TID 1500, highdicom) for MedSAM2 results.

One Comprehensive 3D SR per result, with two groups per object:

- a volumetric measurement group (TID 1411) that references the object's
  segment of the SEG (and, through it, the source series) and carries its
  volume in mL and its RECIST long and short axes in mm;
- two planar measurement groups (TID 1410) on the RECIST key slice, one per
  axis: its image region is that axis as a POLYLINE on the source instance of
  the slice, its measurement the axis length.  (TID 1410 allows no coordinates
  on its measurements, hence one group per line.)  Viewers draw SR
  measurements only from image coordinates: OHIF shows "Measurements (0)" for
  volumetric groups alone, and draws and lists each of these lines.

An object's groups share its tracking identifier (the object's label) but have
their own tracking UIDs, since OHIF merges groups that share one (and would then
draw only the first line).
The report is built completely, and checked to survive encoding and decoding,
before it leaves the process.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from medsam2.errors import InvalidInput
from medsam2.io.dicom_seg import SEGMENTATION_STORAGE, software_version
from medsam2.io.dicom_source import DicomSource
from medsam2.io.errors import InvalidSegmentation
from medsam2.io.measurements import ObjectMeasurements, Recist
from medsam2.io.result_series import describe, stamp

MILLILITRE = Code("mL", "UCUM", "milliliter")
MILLIMETRE = Code("mm", "UCUM", "millimeter")


def build_measurement_report(
    seg: Dataset,
    measurements: Sequence[ObjectMeasurements],
    *,
    model_version: str,
    source: DicomSource,
    series_number: int | None = None,
    series_description: str | None = None,
) -> Dataset:
    """A TID 1500 report of ``measurements`` (one per segment of ``seg``, in segment order) referencing ``seg``.

    ``source`` is the series ``seg`` was made over: the planar groups reference its instances.  By default the
    SR's series number is the SEG's + 1 and its description names that SEG, the objects and the time.
    """
    import highdicom as hd

    if str(seg.get("SOPClassUID", "")) != SEGMENTATION_STORAGE:
        raise InvalidInput("a measurement report references a DICOM SEG; got another kind of object")
    if str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID) != source.series_uid:
        raise InvalidInput(
            f"SEG {seg.SOPInstanceUID} was made over series {seg.ReferencedSeriesSequence[0].SeriesInstanceUID}, "
            f"not the source given, {source.series_uid}"
        )
    segments = {str(s.TrackingID): int(s.SegmentNumber) for s in seg.SegmentSequence if "TrackingID" in s}
    source_series = str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID)
    algorithm = hd.sr.AlgorithmIdentification(name="MedSAM2", version=model_version[:64])
    groups = []
    for measured in measurements:
        number = segments.get(f"object {measured.obj_id}")
        if number is None:
            raise InvalidInput(f"object {measured.obj_id} has no segment in SEG {seg.SOPInstanceUID}")
        values = [
            hd.sr.Measurement(
                name=codes.SCT.Volume, value=float(measured.volume_ml), unit=MILLILITRE, algorithm_id=algorithm
            )
        ]
        if measured.recist is not None:
            values += [
                hd.sr.Measurement(
                    name=codes.SCT.LongAxis,
                    value=float(measured.recist.long_axis_mm),
                    unit=MILLIMETRE,
                    algorithm_id=algorithm,
                ),
                hd.sr.Measurement(
                    name=codes.SCT.ShortAxis,
                    value=float(measured.recist.short_axis_mm),
                    unit=MILLIMETRE,
                    algorithm_id=algorithm,
                ),
            ]
        if measured.recist is not None:
            groups += _planar_groups(measured.label, measured.recist, source, algorithm)
        groups.append(
            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=measured.label[:64]),
                referenced_segment=hd.sr.ReferencedSegment(
                    sop_class_uid=SEGMENTATION_STORAGE,
                    sop_instance_uid=str(seg.SOPInstanceUID),
                    segment_number=number,
                    source_series=hd.sr.SourceSeriesForSegmentation(source_series),
                ),
                finding_type=codes.SCT.Lesion,
                algorithm_id=algorithm,
                measurements=values,
            )
        )
    device = hd.sr.ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(),
            name="MedSAM2",
            manufacturer_name="medsam2-serving",
            model_name=model_version[:64],
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=codes.SCT.ImagingProcedure,
        imaging_measurements=groups,
    )
    if series_number is None:
        series_number = int(seg.SeriesNumber) + 1
    if series_description is None:
        when = stamp()
        series_description = describe(f"MedSAM2 SR of SEG {seg.SeriesNumber}:", [m.label for m in measurements], when)
    keys = {m.recist.slice for m in measurements if m.recist is not None}
    shown = [source.datasets[0]] if source.multiframe else [source.datasets[k] for k in sorted(keys)]
    try:
        sr = hd.sr.Comprehensive3DSR(
            evidence=[seg, *shown],
            content=report[0],
            series_instance_uid=generate_uid(),
            series_number=series_number,
            sop_instance_uid=generate_uid(),
            instance_number=1,
            manufacturer="medsam2-serving",
            is_complete=True,
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise InvalidSegmentation(
            f"highdicom cannot build the measurement report for SEG {seg.SOPInstanceUID}: {exc}"
        ) from exc
    sr.SeriesDescription = series_description[:64]
    sr.SoftwareVersions = software_version()
    return sr


def _planar_groups(label: str, recist: Recist, source: DicomSource, algorithm):  # noqa: ANN001, ANN202 - highdicom
    """Two TID 1410 groups of one object on its RECIST key slice: the long and the short axis, each as its region."""
    import highdicom as hd

    if source.multiframe:
        assert source.frame_numbers is not None
        ds, frames = source.datasets[0], [source.frame_numbers[recist.slice]]
    else:
        ds, frames = source.datasets[recist.slice], None
    groups = []
    for name, value, ends in (
        (codes.SCT.LongAxis, recist.long_axis_mm, recist.long_axis_endpoints),
        (codes.SCT.ShortAxis, recist.short_axis_mm, recist.short_axis_endpoints),
    ):
        region = hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=scoord_line(ends),
            source_image=hd.sr.SourceImageForRegion(
                referenced_sop_class_uid=str(ds.SOPClassUID),
                referenced_sop_instance_uid=str(ds.SOPInstanceUID),
                referenced_frame_numbers=frames,
            ),
        )
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=label[:64]),
                referenced_region=region,
                finding_type=codes.SCT.Lesion,
                algorithm_id=algorithm,
                measurements=[
                    hd.sr.Measurement(name=name, value=float(value), unit=MILLIMETRE, algorithm_id=algorithm)
                ],
            )
        )
    return groups


def scoord_line(ends: tuple[tuple[float, float], ...]) -> np.ndarray:
    """Endpoints (row, column) with pixel centres at whole numbers -> SCOORD (column, row) pairs.

    DICOM image coordinates put the top-left corner of the top-left pixel at (0, 0), so its centre is at (0.5, 0.5).
    """
    return np.array([[c + 0.5, r + 0.5] for r, c in ends], np.float32)


def encode_report(sr: Dataset) -> bytes:
    """The report as a DICOM file, checked to decode again; ``InvalidSegmentation`` if it does not."""
    import highdicom as hd

    buffer = io.BytesIO()
    try:
        sr.save_as(buffer, enforce_file_format=True)
        hd.sr.srread(io.BytesIO(buffer.getvalue()))
    except Exception as exc:  # any failure to encode or decode means the object must not leave
        raise InvalidSegmentation(f"SR {sr.SOPInstanceUID} does not survive encoding and decoding: {exc}") from exc
    return buffer.getvalue()
