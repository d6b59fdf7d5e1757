"""The TID 1500 measurement report: built with highdicom over a real SEG, read back, referencing that SEG.

Each object gets a volumetric group (TID 1411, referencing its segment) and a planar group (TID 1410) on the
RECIST key slice with the long and short axes as POLYLINEs on the source instance: the form OHIF draws.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from dicom_conformance import dciodvfy_errors
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


@pytest.fixture(scope="module")
def two_objects(volume):
    first = np.zeros(volume.voxels.shape, bool)
    first[2:5, 10:20, 8:18] = True
    first[3, 10:20, 8:22] = True  # slice 3 is the longest: the key slice
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
    sr = build_measurement_report(seg, measured, model_version="0123456789ab", source=volume.dicom)
    return seg, measured, sr


def test_report_measures_each_segment_and_references_the_seg(volume, two_objects) -> None:
    seg, measured, sr = two_objects
    report = hd.sr.srread(io.BytesIO(encode_report(sr)))
    groups = report.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == 2
    for group, want, number in zip(groups, measured, (1, 2), strict=True):
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


def test_each_object_has_planar_groups_with_both_axes_as_lines_on_the_key_slice(volume, two_objects) -> None:
    _, measured, sr = two_objects
    report = hd.sr.srread(io.BytesIO(encode_report(sr)))
    planar = report.content.get_planar_roi_measurement_groups()
    assert [g.tracking_identifier for g in planar] == ["liver lesion"] * 2 + ["node"] * 2
    volumetric = report.content.get_volumetric_roi_measurement_groups()
    uids = [g.tracking_uid for g in planar + volumetric]
    assert len(set(uids)) == len(uids)  # own tracking UIDs: OHIF merges the groups that share one
    dy, dx = volume.spacing[1], volume.spacing[2]
    for pair, want in zip((planar[:2], planar[2:]), measured, strict=True):
        key = want.recist.slice
        for group, name, length, ends in (
            (pair[0], "Long axis", want.recist.long_axis_mm, want.recist.long_axis_endpoints),
            (pair[1], "Short axis", want.recist.short_axis_mm, want.recist.short_axis_endpoints),
        ):
            [value] = group.get_measurements()
            assert (value.name.meaning, value.value, value.unit.value) == (name, pytest.approx(length), "mm")
            region = group.roi
            assert region.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
            source = region.ContentSequence[0]
            assert source.referenced_sop_instance_uid == volume.dicom.slice_uids[key]
            assert source.referenced_sop_class_uid == str(volume.dicom.datasets[key].SOPClassUID)
            points = np.asarray(region.GraphicData, float).reshape(-1, 2)  # (column, row), pixel corner at 0
            np.testing.assert_allclose(points, [[c + 0.5, r + 0.5] for r, c in ends], atol=1e-4)
            # The line is as long as the measurement says (mm from the pixel spacing).
            mm = float(np.hypot((points[1, 0] - points[0, 0]) * dx, (points[1, 1] - points[0, 1]) * dy))
            assert mm == pytest.approx(length, rel=0.02, abs=dx)
    assert measured[0].recist.slice == 3  # the longest slice of the first object, as built


def test_seg_and_sr_series_are_numbered_apart_and_described(two_objects, volume) -> None:
    seg, _, sr = two_objects
    assert int(sr.SeriesNumber) == int(seg.SeriesNumber) + 1
    assert int(seg.SeriesNumber) >= 1000 and int(seg.SeriesNumber) % 2 == 0
    assert seg.SeriesDescription.startswith("MedSAM2 SEG liver lesion, node ")
    assert sr.SeriesDescription.startswith(f"MedSAM2 SR of SEG {seg.SeriesNumber}: liver lesion, node ")
    assert seg.SeriesDescription.endswith("Z") and len(sr.SeriesDescription) <= 64
    later = build_seg({1: np.ones(volume.voxels.shape, bool)}, volume, Algorithm("v"))
    assert later.SeriesInstanceUID != seg.SeriesInstanceUID


def test_sr_passes_dciodvfy(two_objects, tmp_path: Path) -> None:
    if shutil.which("dciodvfy") is None:
        pytest.fail("dciodvfy (Debian's dicom3tools) is not installed: run scripts/test_deps.sh")
    _, _, sr = two_objects
    path = tmp_path / "sr.dcm"
    path.write_bytes(encode_report(sr))
    assert pydicom.dcmread(path).SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"
    assert dciodvfy_errors(path) == []


def test_report_refuses_an_object_without_a_segment(volume) -> None:
    mask = np.zeros(volume.voxels.shape, bool)
    mask[3, 5:9, 5:9] = True
    seg = build_seg({1: mask}, volume, Algorithm("v"))
    with pytest.raises(InvalidInput, match="object 2 has no segment"):
        build_measurement_report(seg, measure_all({2: mask}, volume.spacing), model_version="v", source=volume.dicom)


def test_report_refuses_a_source_that_is_not_the_segs(volume, tmp_path: Path) -> None:
    other = read_volume(write_synthetic_ct(tmp_path, slices=8, size=32).folder)
    mask = np.zeros(volume.voxels.shape, bool)
    mask[3, 5:9, 5:9] = True
    seg = build_seg({1: mask}, volume, Algorithm("v"))
    with pytest.raises(InvalidInput, match="was made over series"):
        build_measurement_report(seg, measure_all({1: mask}, volume.spacing), model_version="v", source=other.dicom)


def _uid_refs(items) -> list[str]:
    """Every UIDREF value in a sequence of content items and below (the source series of a referenced segment)."""
    found = []
    for item in items:
        if item.get("ValueType", "") == "UIDREF":
            found.append(str(item.UID))
        found += _uid_refs(item.get("ContentSequence", []))
    return found
