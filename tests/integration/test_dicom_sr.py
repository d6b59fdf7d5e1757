"""The TID 1500 measurement report: built with highdicom over a real SEG, read back, referencing that SEG."""

from __future__ import annotations

import io

import highdicom as hd
import numpy as np
import pytest

from medsam2.errors import InvalidInput
from medsam2.io.dicom_seg import Algorithm, SegmentSpec, build_seg
from medsam2.io.dicom_sr import build_measurement_report, encode_report
from medsam2.io.measurements import measure_all
from medsam2.io.volumes import read_volume
from medsam2.testing.synthetic_ct import write_synthetic_ct


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory):
    series = write_synthetic_ct(tmp_path_factory.mktemp("ct"), slices=8, size=32)
    return read_volume(series.folder)


def test_report_measures_each_segment_and_references_the_seg(volume) -> None:
    first = np.zeros(volume.voxels.shape, bool)
    first[2:5, 10:20, 8:18] = True
    second = np.zeros(volume.voxels.shape, bool)
    second[4:6, 3:6, 3:9] = True
    masks = {1: first, 3: second}
    seg = build_seg(
        masks,
        volume,
        Algorithm("0123456789ab"),
        [SegmentSpec(1, "liver lesion", (255, 0, 0)), SegmentSpec(3, "node", (0, 255, 0))],
    )
    measured = measure_all(masks, volume.spacing, {1: "liver lesion", 3: "node"})
    report = hd.sr.srread(
        io.BytesIO(encode_report(build_measurement_report(seg, measured, model_version="0123456789ab")))
    )
    groups = report.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == 2
    for group, want, number in zip(groups, measured, (1, 2), strict=False):
        ref = group.referenced_segment
        assert ref.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert ref.referenced_segment_numbers == [number]
        assert _uid_refs(ref) == [volume.dicom.series_uid]  # the source series, through the segment
        values = {m.name.meaning: (m.value, m.unit.value) for m in group.get_measurements()}
        assert values["Volume"] == (pytest.approx(want.volume_ml), "mL")
        assert values["Long axis"] == (pytest.approx(want.recist.long_axis_mm), "mm")
        assert values["Short axis"] == (pytest.approx(want.recist.short_axis_mm), "mm")
    assert str(report.StudyInstanceUID) == str(seg.StudyInstanceUID)
    evidence = {
        str(i.ReferencedSOPInstanceUID)
        for s in report.CurrentRequestedProcedureEvidenceSequence
        for r in s.ReferencedSeriesSequence
        for i in r.ReferencedSOPSequence
    }
    assert str(seg.SOPInstanceUID) in evidence


def test_report_refuses_an_object_without_a_segment(volume) -> None:
    mask = np.zeros(volume.voxels.shape, bool)
    mask[3, 5:9, 5:9] = True
    seg = build_seg({1: mask}, volume, Algorithm("v"))
    with pytest.raises(InvalidInput, match="object 2 has no segment"):
        build_measurement_report(seg, measure_all({2: mask}, volume.spacing), model_version="v")


def _uid_refs(items) -> list[str]:
    """Every UIDREF value in a sequence of content items and below (the source series of a referenced segment)."""
    found = []
    for item in items:
        if item.get("ValueType", "") == "UIDREF":
            found.append(str(item.UID))
        found += _uid_refs(item.get("ContentSequence", []))
    return found
