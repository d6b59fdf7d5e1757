"""DICOM SR measurement reports (TID 1500, highdicom) for MedSAM2 results.

One Comprehensive 3D SR per result: for each object, a volumetric measurement
group (TID 1411) that references its segment of the SEG (and, through it, the
source series) and carries the object's volume in mL and its RECIST long and
short axes in mm.  The report is built completely, and checked to survive
encoding and decoding, before it leaves the process.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from medsam2.errors import InvalidInput
from medsam2.io.dicom_seg import SEGMENTATION_STORAGE, software_version
from medsam2.io.errors import InvalidSegmentation
from medsam2.io.measurements import ObjectMeasurements

COMPREHENSIVE_3D_SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.34"
MILLILITRE = Code("mL", "UCUM", "milliliter")
MILLIMETRE = Code("mm", "UCUM", "millimeter")


def build_measurement_report(
    seg: Dataset,
    measurements: Sequence[ObjectMeasurements],
    *,
    model_version: str,
    series_number: int = 901,
    series_description: str = "MedSAM2 measurements",
) -> Dataset:
    """A TID 1500 report of ``measurements`` (one per segment of ``seg``, in segment order) referencing ``seg``."""
    import highdicom as hd

    if str(seg.get("SOPClassUID", "")) != SEGMENTATION_STORAGE:
        raise InvalidInput("a measurement report references a DICOM SEG; got another kind of object")
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
    try:
        sr = hd.sr.Comprehensive3DSR(
            evidence=[seg],
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
