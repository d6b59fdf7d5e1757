"""DICOM SEG construction fails fast on bad arguments, and validation catches every broken SEG."""

from __future__ import annotations

import copy
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from medsam2.errors import InvalidInput
from medsam2.io.dicom_seg import Algorithm, SegmentSpec, build_seg, default_segments, validate_seg, write_seg
from medsam2.io.dicom_series import read_dicom
from medsam2.io.errors import InvalidSegmentation
from medsam2.io.volumes import Volume, read_volume
from medsam2.testing.synthetic_ct import SyntheticSeries, write_synthetic_ct


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> SyntheticSeries:
    return write_synthetic_ct(tmp_path_factory.mktemp("ct") / "ct", slices=12, size=64)


@pytest.fixture(scope="module")
def volume(series: SyntheticSeries) -> Volume:
    return read_dicom(series.folder)


def two_objects(shape: tuple[int, int, int]) -> dict[int, np.ndarray]:
    a = np.zeros(shape, bool)
    a[3:6, 10:30, 10:30] = True
    b = np.zeros(shape, bool)
    b[5:9, 20:40, 25:50] = True  # overlaps a on slice 5
    return {2: a, 7: b}


@pytest.fixture(scope="module")
def seg(volume: Volume) -> pydicom.Dataset:
    return build_seg(two_objects(volume.voxels.shape), volume, Algorithm("v1.2"))


def test_two_objects_become_two_segments_with_their_own_frames(seg: pydicom.Dataset, volume: Volume) -> None:
    validate_seg(seg, volume.dicom)
    read = hd.seg.Segmentation.from_dataset(seg)
    assert read.number_of_segments == 2
    assert [read.get_segment_description(n).segment_label for n in (1, 2)] == ["object 2", "object 7"]
    assert [read.get_segment_description(n).tracking_id for n in (1, 2)] == ["object 2", "object 7"]
    colours = {tuple(read.get_segment_description(n).RecommendedDisplayCIELabValue) for n in (1, 2)}
    assert len(colours) == 2
    masks = two_objects(volume.voxels.shape)
    assert seg.NumberOfFrames == 3 + 4  # one frame per segment per covered slice; overlap kept in each
    for number, obj_id in ((1, 2), (2, 7)):
        covered = [k for k in range(12) if masks[obj_id][k].any()]
        uids = [volume.dicom.slice_uids[k] for k in covered]
        pixels = read.get_pixels_by_source_instance(uids, segment_numbers=[number])[..., 0]
        np.testing.assert_array_equal(pixels.astype(bool), masks[obj_id][covered])


def test_software_and_series_identify_medsam2(seg: pydicom.Dataset) -> None:
    assert seg.ManufacturerModelName == "MedSAM2"
    assert str(seg.SoftwareVersions).startswith("medsam2-serving")
    assert seg.SeriesDescription.startswith("MedSAM2 SEG object 2, object 7 20") and seg.ContentLabel == "MEDSAM2"


def test_a_seg_over_a_multiframe_source_references_frames(tmp_path: Path, series: SyntheticSeries) -> None:
    singles = [pydicom.dcmread(p) for p in series.paths]
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(
        singles,
        series_instance_uid=pydicom.uid.generate_uid(),
        series_number=3,
        sop_instance_uid=pydicom.uid.generate_uid(),
        instance_number=1,
    )
    enhanced.save_as(tmp_path / "mf.dcm", enforce_file_format=True)
    volume = read_volume(tmp_path / "mf.dcm")
    mask = np.zeros(volume.voxels.shape, bool)
    mask[4, 5:15, 5:15] = True
    seg = build_seg({1: mask}, volume, Algorithm("v"))
    validate_seg(seg, volume.dicom)
    shared = seg.get("SharedFunctionalGroupsSequence")[0]
    item = seg.PerFrameFunctionalGroupsSequence[0]
    derivation = (item.get("DerivationImageSequence") or shared.DerivationImageSequence)[0]
    reference = derivation.SourceImageSequence[0]
    assert reference.ReferencedSOPInstanceUID == enhanced.SOPInstanceUID
    frame = int(reference.ReferencedFrameNumber)
    assert frame == volume.dicom.frame_numbers[4]
    stated = enhanced.PerFrameFunctionalGroupsSequence[frame - 1].PlanePositionSequence[0].ImagePositionPatient
    np.testing.assert_allclose([float(v) for v in stated], volume.geometry.position(4), atol=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"label": ""}, "segment label must be 1 to 64 characters"),
        ({"label": "x" * 65}, "segment label must be 1 to 64 characters"),
        ({"colour": (256, 0, 0)}, r"segment colour must be three integers 0\.\.255 \(sRGB\), got \(256, 0, 0\)"),
        ({"colour": (1, 2)}, "segment colour must be three integers"),
    ],
)
def test_segment_spec_fails_fast(kwargs: dict, message: str) -> None:
    arguments = {"obj_id": 1, "label": "lesion", "colour": (1, 2, 3), **kwargs}
    with pytest.raises(InvalidInput, match=message):
        SegmentSpec(**arguments)


def test_algorithm_needs_a_version() -> None:
    with pytest.raises(InvalidInput, match="the model version must be 1 to 64 characters, got ' '"):
        Algorithm(" ")


def test_build_refuses_bad_arguments(volume: Volume) -> None:
    masks = two_objects(volume.voxels.shape)
    with pytest.raises(InvalidInput, match=r"segment specs are for objects \[2\] but the masks are for \[2, 7\]"):
        build_seg(masks, volume, Algorithm("v"), default_segments([2]))
    with pytest.raises(InvalidInput, match=r"object 1's mask has shape \(3, 64, 64\), the volume \(12, 64, 64\)"):
        build_seg({1: np.zeros((3, 64, 64), bool)}, volume, Algorithm("v"))
    with pytest.raises(InvalidInput, match="at least one segment"):
        build_seg({}, volume, Algorithm("v"))
    npz_like = Volume(volume.voxels, volume.spacing, "npz")
    expected = "a DICOM SEG references its source images, but this volume was read from npz"
    with pytest.raises(InvalidInput, match=expected):
        build_seg(masks, npz_like, Algorithm("v"))


def test_a_cine_loop_without_geometry_gets_no_seg() -> None:
    from pydicom.data import get_testdata_file

    from medsam2.io.outputs import check_output

    cine = read_volume(Path(get_testdata_file("examples_ybr_color.dcm")))
    with pytest.raises(
        InvalidInput,
        match=r"examples_ybr_color\.dcm: its 30 frames have no patient geometry .*"
        r"dicom-cine.* write \.nii\.gz",
    ):
        check_output(Path("x.dcm"), cine)
    with pytest.raises(InvalidInput, match="have no patient geometry"):
        build_seg({1: np.zeros(cine.voxels.shape, bool)}, cine, Algorithm("v"))


def _broken(seg: pydicom.Dataset, how: str) -> pydicom.Dataset:
    bad = copy.deepcopy(seg)
    item = bad.PerFrameFunctionalGroupsSequence[1]
    if how == "foreign reference":
        item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID = "1.2.3.4"
    elif how == "moved frame":
        item.PlanePositionSequence[0].ImagePositionPatient = [0.0, 0.0, 999.0]
    elif how == "undefined segment":
        item.SegmentIdentificationSequence[0].ReferencedSegmentNumber = 9
    elif how == "short pixel data":
        bad.PixelData = bad.PixelData[: len(bad.PixelData) // 2]
    elif how == "frame count":
        bad.NumberOfFrames = int(bad.NumberOfFrames) + 1
    elif how == "no segments":
        del bad.SegmentSequence
    elif how == "other study":
        bad.StudyInstanceUID = pydicom.uid.generate_uid()
    elif how == "not a seg":
        bad.SOPClassUID = pydicom.uid.CTImageStorage
    return bad


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("foreign reference", r"frame 2 references 1\.2\.3\.4, which its ReferencedSeriesSequence omits"),
        ("moved frame", r"frame 2 is at \[0\.0, 0\.0, 999\.0\] but its source slice"),
        ("undefined segment", "frame 2 refers to segment 9, which the SEG does not define"),
        ("short pixel data", r"pixel data has \d+ bytes, 7 binary frames need \d+"),
        ("frame count", "NumberOfFrames 8 but has 7 per-frame items"),
        ("no segments", "lacks SegmentSequence"),
        ("other study", "SEG belongs to study .* but its source series is in study"),
        ("not a seg", "not a Segmentation object"),
    ],
)
def test_validation_names_the_fault(seg: pydicom.Dataset, volume: Volume, how: str, message: str) -> None:
    with pytest.raises(InvalidSegmentation, match=message):
        validate_seg(_broken(seg, how), volume.dicom)


def test_an_invalid_seg_is_never_written(seg: pydicom.Dataset, volume: Volume, tmp_path: Path) -> None:
    target = tmp_path / "out.dcm"
    with pytest.raises(InvalidSegmentation):
        write_seg(target, _broken(seg, "undefined segment"), volume.dicom)
    assert list(tmp_path.iterdir()) == []
    write_seg(target, seg, volume.dicom)
    assert pydicom.dcmread(target).SOPInstanceUID == seg.SOPInstanceUID
