"""Pixels as a viewer shows them, files without file meta, zero pixel spacing, and --series over broken files."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_color_lut, apply_modality_lut

from medsam2.errors import NotFound
from medsam2.io.dicom_pixels import to_grey_uint8
from medsam2.io.errors import CorruptDicom, IrregularStack
from medsam2.io.volumes import read_volume


def _file(name: str) -> Path:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} is in pydicom-data, which is not installed")
    return Path(path)


def test_monochrome1_is_inverted_so_bone_is_bright(tmp_path: Path) -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    as_mono2 = read_volume(Path(get_testdata_file("CT_small.dcm"))).voxels
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(tmp_path / "mono1.dcm")
    as_mono1 = read_volume(tmp_path / "mono1.dcm").voxels
    # Same range, flipped: the brightest MONOCHROME2 voxel is the brightest after inverting MONOCHROME1.
    assert as_mono1.min() == as_mono2.min() and as_mono1.max() == as_mono2.max()
    np.testing.assert_array_equal(as_mono1, as_mono2.min() + as_mono2.max() - as_mono2)


def test_a_real_monochrome1_cr_reads_inverted() -> None:
    path = _file("RG3_UNCR.dcm")
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    stored = ds.pixel_array.astype(np.int64)
    voxels = read_volume(path).voxels[0].astype(np.int64)
    np.testing.assert_array_equal(voxels, stored.min() + stored.max() - stored)


def test_palette_colour_goes_through_its_palette() -> None:
    path = Path(get_testdata_file("examples_palette.dcm"))
    ds = pydicom.dcmread(path)
    expected = to_grey_uint8(apply_color_lut(ds.pixel_array, ds)[np.newaxis])
    voxels = read_volume(path).voxels
    np.testing.assert_array_equal(voxels[:1], expected)
    assert not np.array_equal(voxels[0], ds.pixel_array)  # the indices themselves are not grey values


def test_the_modality_lut_sequence_is_applied() -> None:
    path = _file("mlut_18.dcm")
    ds = pydicom.dcmread(path)
    assert "ModalityLUTSequence" in ds
    np.testing.assert_array_equal(read_volume(path).voxels[0], apply_modality_lut(ds.pixel_array, ds))


def test_a_file_without_file_meta_is_read() -> None:
    path = _file("OT-PAL-8-face.dcm")
    with path.open("rb") as handle:
        assert handle.read(132)[128:] != b"DICM"
    volume = read_volume(path)
    assert volume.voxels.shape == (1, 480, 640) and volume.voxels.dtype == np.uint8


def test_zero_pixel_spacing_is_refused_for_an_image(tmp_path: Path) -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PixelSpacing = [0, 0]
    ds.save_as(tmp_path / "zero.dcm")
    with pytest.raises(IrregularStack, match=r"zero\.dcm: PixelSpacing is \[0\.0, 0\.0\]; a pixel needs a positive"):
        read_volume(tmp_path / "zero.dcm")


def test_zero_pixel_spacing_in_a_video_becomes_1_mm_with_a_warning(tmp_path: Path, caplog) -> None:
    ds = pydicom.dcmread(get_testdata_file("SC_rgb_rle_2frame.dcm"))
    ds.PixelSpacing = [0, 0]
    ds.save_as(tmp_path / "cine.dcm")
    with caplog.at_level(logging.WARNING):
        volume = read_volume(tmp_path / "cine.dcm")
    assert volume.source_format == "dicom-cine" and volume.spacing == (1.0, 1.0, 1.0)
    assert "using 1 mm per pixel" in caplog.text


def test_an_enhanced_image_without_functional_groups_is_not_a_cine() -> None:
    with pytest.raises(IrregularStack, match=r"Enhanced MR Image Storage object whose functional groups give no"):
        read_volume(Path(get_testdata_file("emri_small.dcm")))


def _ct5n(tmp_path: Path) -> Path:
    folder = tmp_path / "study"
    shutil.copytree(
        Path(get_testdata_file("CT_small.dcm")).parent / "dicomdirtests" / "98892001" / "CT5N", folder / "ct"
    )
    return folder


def test_series_ignores_broken_objects_of_other_series(tmp_path: Path) -> None:
    folder = _ct5n(tmp_path)
    wanted = str(pydicom.dcmread(next((folder / "ct").iterdir())).SeriesInstanceUID)
    # Another series: a truncated image, and an image object whose pixel data was stripped.
    other = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    other.save_as(folder / "mr_whole.dcm")
    data = (folder / "mr_whole.dcm").read_bytes()
    (folder / "mr_cut.dcm").write_bytes(data[: len(data) // 2])
    del other.PixelData
    other.SOPInstanceUID = pydicom.uid.generate_uid()
    other.save_as(folder / "mr_no_pixels.dcm")
    (folder / "mr_whole.dcm").unlink()
    with pytest.raises(CorruptDicom, match=r"mr_(cut|no_pixels)\.dcm .*(truncated|corrupt)"):
        read_volume(folder)
    volume = read_volume(folder, wanted)
    assert volume.voxels.shape[0] == 5 and volume.dicom is not None and volume.dicom.series_uid == wanted
    with pytest.raises(NotFound, match=r"series 1\.2\.3 is not in"):
        read_volume(folder, "1.2.3")
