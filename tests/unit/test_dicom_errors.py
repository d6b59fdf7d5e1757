"""Bad DICOM input gets a specific error whose message names the problem and the way out."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate

from medsam2.errors import InvalidInput, NotFound
from medsam2.io.dicom_series import read_dicom
from medsam2.io.errors import (
    CorruptDicom,
    IrregularStack,
    MissingSlices,
    MixedSeries,
    NotAnImage,
    UnsupportedTransferSyntax,
)
from medsam2.io.volumes import read_volume
from medsam2.testing.synthetic_ct import write_synthetic_ct


@pytest.fixture()
def small_series(tmp_path: Path):
    return write_synthetic_ct(tmp_path / "ct", slices=8, size=32)


def test_errors_are_input_errors() -> None:
    for kind in (CorruptDicom, NotAnImage, MixedSeries, MissingSlices, IrregularStack, UnsupportedTransferSyntax):
        assert issubclass(kind, InvalidInput)  # exit code 2 / INVALID_ARGUMENT without new mappings


def test_truncated_pixel_data_is_named(small_series, tmp_path: Path) -> None:
    victim = small_series.paths[3]
    data = victim.read_bytes()
    victim.write_bytes(data[:-1000])
    with pytest.raises(CorruptDicom, match=rf"{victim.name}.* truncated or corrupt"):
        read_dicom(small_series.folder)


def test_truncated_large_pixel_data_is_caught_when_reading_the_file(tmp_path: Path) -> None:
    series = write_synthetic_ct(tmp_path / "ct", slices=3, size=128)  # pixel data large enough to be deferred
    victim = series.paths[1]
    victim.write_bytes(victim.read_bytes()[:-1000])
    expected = rf"{victim.name} is truncated or corrupt: its DICOM elements end at byte \d+ but the file"
    with pytest.raises(CorruptDicom, match=expected):
        read_dicom(series.folder)


def test_truncated_header_is_named(small_series) -> None:
    victim = small_series.paths[0]
    victim.write_bytes(victim.read_bytes()[:700])  # cut inside the header, on an element boundary or not
    with pytest.raises(CorruptDicom, match=rf"{victim.name} .*(truncated|corrupt|not a readable)"):
        read_dicom(small_series.folder)


def test_overwritten_header_is_named(small_series) -> None:
    victim = small_series.paths[2]
    data = bytearray(victim.read_bytes())
    data[400:440] = b"\xff" * 40
    victim.write_bytes(bytes(data))
    with pytest.raises(CorruptDicom, match=rf"{victim.name}"):
        read_dicom(small_series.folder)


def test_pydicoms_truncated_mr_is_refused() -> None:
    with pytest.raises(CorruptDicom, match=r"MR_truncated\.dcm is truncated or corrupt"):
        read_volume(Path(get_testdata_file("MR_truncated.dcm")))


def test_two_series_in_one_folder_lists_both_and_how_to_choose(tmp_path: Path) -> None:
    a = write_synthetic_ct(tmp_path / "mixed", slices=4, size=16, seed=1)
    b = write_synthetic_ct(tmp_path / "mixed", slices=6, size=16, seed=2)
    with pytest.raises(MixedSeries, match=r"holds 2 image series") as info:
        read_dicom(tmp_path / "mixed")
    message = str(info.value)
    assert a.series_uid in message and b.series_uid in message
    assert "4 object(s)" in message and "6 object(s)" in message and "--series" in message


def test_pydicoms_scout_and_gated_series_are_two_series() -> None:
    with pytest.raises(MixedSeries, match=r"'Scout'.*'SmartScore - Gated 0.5 sec'|'SmartScore.*'Scout'"):
        read_dicom(Path(get_testdata_file("dicomdirtests/98892001/CT5N/2062")).parent.parent)


def test_choosing_a_series_that_is_not_there(small_series) -> None:
    with pytest.raises(NotFound, match=r"series 1\.2\.3 is not in .*synthetic phantom"):
        read_dicom(small_series.folder, series_uid="1.2.3")


def test_missing_slice_reports_the_gap(tmp_path: Path) -> None:
    write_synthetic_ct(tmp_path / "gap", slices=10, size=16, skip_slices=(4,))
    expected = r"gap of 5\.000 mm between .* spacing is 2\.500 mm: about 1 slice\(s\) missing"
    with pytest.raises(MissingSlices, match=expected):
        read_dicom(tmp_path / "gap")


def test_duplicate_positions_are_refused(small_series) -> None:
    copy = small_series.folder / "copy.dcm"
    ds = pydicom.dcmread(small_series.paths[5])
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(copy, enforce_file_format=True)
    with pytest.raises(IrregularStack, match=r"two acquisitions .* mixed in one series"):
        read_dicom(small_series.folder)


def test_a_localizer_of_another_orientation_is_refused(small_series) -> None:
    ds = pydicom.dcmread(small_series.paths[1])
    ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]  # sagittal
    ds.save_as(small_series.paths[1], enforce_file_format=True)
    with pytest.raises(IrregularStack, match="planes of different orientations"):
        read_dicom(small_series.folder)


def test_positions_off_one_line_are_refused_not_misplaced(small_series) -> None:
    ds = pydicom.dcmread(small_series.paths[4])
    position = [float(v) for v in ds.ImagePositionPatient]
    ds.ImagePositionPatient = [position[0] + 7.0, position[1], position[2]]  # one slice shifted sideways
    ds.save_as(small_series.paths[4], enforce_file_format=True)
    with pytest.raises(IrregularStack, match="do not lie on one straight line"):
        read_dicom(small_series.folder)


@pytest.mark.parametrize("name", ["rtstruct.dcm", "rtplan.dcm", "test-SR.dcm"])
def test_non_image_objects_are_named(name: str) -> None:
    with pytest.raises(NotAnImage, match=rf"{name} is a .* object .*not an image"):
        read_volume(Path(get_testdata_file(name)))


def test_a_seg_points_to_the_series_it_segments() -> None:
    with pytest.raises(NotAnImage, match=r"Segmentation Storage .* it segments series 1\.2\.392\S+: read that series"):
        read_volume(Path(get_testdata_file("liver_1frame.dcm")))


def test_a_folder_of_only_non_images(tmp_path: Path) -> None:
    folder = tmp_path / "rt"
    folder.mkdir()
    for name in ("rtstruct.dcm", "rtplan.dcm"):
        shutil.copy(get_testdata_file(name), folder / name)
    with pytest.raises(NotAnImage, match=r"holds no image objects, only: .*RT Structure Set Storage"):
        read_dicom(folder)


def test_a_compression_pydicom_cannot_decode_at_all_is_named(small_series) -> None:
    # An H.264 video transfer syntax: pydicom has no decoder for it, so no plug-in could help.
    victim = small_series.paths[0]
    ds = pydicom.dcmread(victim)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.MPEG4HP41
    ds.PixelData = encapsulate([b"\x00\x00\x00\x01" + bytes(64)])
    ds["PixelData"].VR = "OB"
    ds.save_as(victim, enforce_file_format=True)
    expected = r"MPEG-4 AVC/H\.264 .*\(1\.2\.840\.10008\.1\.2\.4\.102\), which pydicom has no decoder"
    with pytest.raises(UnsupportedTransferSyntax, match=expected):
        read_dicom(small_series.folder)


def test_unsupported_compression_fails_before_decoding_anything(small_series, monkeypatch) -> None:
    # The check runs on every file's header first: no slice is decoded when one cannot be.
    import medsam2.io.dicom_series as series_module

    victim = small_series.paths[-1]
    ds = pydicom.dcmread(victim)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.MPEG4HP41
    ds.PixelData = encapsulate([bytes(64)])
    ds["PixelData"].VR = "OB"
    ds.save_as(victim, enforce_file_format=True)
    decoded = []
    original = series_module.stored_frames
    monkeypatch.setattr(series_module, "stored_frames", lambda d, label: decoded.append(label) or original(d, label))
    with pytest.raises(UnsupportedTransferSyntax):
        read_dicom(small_series.folder)
    assert decoded == []


def test_4d_nifti_is_refused_with_its_shape() -> None:
    from nibabel.testing import data_path

    with pytest.raises(InvalidInput, match=r"example4d.nii.gz is 4-D, shape \(128, 96, 24, 2\) \(2 volumes\)"):
        read_volume(Path(data_path) / "example4d.nii.gz")


def test_missing_input_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="not found"):
        read_volume(tmp_path / "nothing.dcm")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotFound, match="holds no DICOM files"):
        read_volume(tmp_path / "empty")


def test_colour_stack_values_are_grey_uint8(tmp_path: Path) -> None:
    volume = read_volume(Path(get_testdata_file("SC_rgb_rle.dcm")))
    assert volume.voxels.dtype == np.uint8 and volume.voxels.shape == (1, 100, 100)
