"""DICOM readers on files nobody here wrote (pydicom's, highdicom-converted) and on synthetic series.

Expected values come from pydicom's own decoding and modality LUT and from
highdicom's volume geometry, never from our reader.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut

from medsam2.io.dicom_series import read_dicom
from medsam2.io.geometry import Plane
from medsam2.io.volumes import read_volume
from medsam2.testing.synthetic_ct import write_synthetic_ct


def _expected_values(name: str) -> np.ndarray:
    ds = pydicom.dcmread(get_testdata_file(name))
    return apply_modality_lut(ds.pixel_array, ds)


def test_ct_small_reads_in_hounsfield_units_with_its_geometry() -> None:
    volume = read_volume(Path(get_testdata_file("CT_small.dcm")))
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    assert volume.voxels.shape == (1, 128, 128)
    assert volume.modality == "CT"
    np.testing.assert_array_equal(volume.voxels[0], _expected_values("CT_small.dcm"))
    assert volume.geometry is not None
    np.testing.assert_allclose(volume.geometry.origin, [float(v) for v in ds.ImagePositionPatient])
    assert volume.spacing == pytest.approx((float(ds.SliceThickness), *map(float, ds.PixelSpacing)))
    assert volume.dicom is not None and volume.dicom.slice_uids == (str(ds.SOPInstanceUID),)


@pytest.mark.parametrize(
    "name",
    [
        "MR_small.dcm",  # explicit VR little endian
        "MR_small_implicit.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_expb.dcm",
        "MR_small_RLE.dcm",
        "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS via pyjpegls
        "MR_small_jp2klossless.dcm",  # JPEG 2000 via Pillow
    ],
)
def test_mr_small_in_every_transfer_syntax_decodes_to_the_same_voxels(name: str) -> None:
    volume = read_volume(Path(get_testdata_file(name)))
    assert volume.modality == "MR"
    np.testing.assert_array_equal(volume.voxels[0], _expected_values("MR_small.dcm"))


def test_jpeg2000_ct_decodes() -> None:
    ds = pydicom.dcmread(get_testdata_file("693_J2KI.dcm"))
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEG2000
    volume = read_volume(Path(get_testdata_file("693_J2KI.dcm")))
    assert volume.voxels.shape == (1, 512, 512)
    np.testing.assert_array_equal(volume.voxels[0], _expected_values("693_J2KI.dcm"))


def test_ct5n_series_sorts_along_the_normal_and_matches_highdicom(tmp_path: Path) -> None:
    source = Path(get_testdata_file("dicomdirtests/98892001/CT5N/2062")).parent
    volume = read_dicom(source)
    datasets = [pydicom.dcmread(p) for p in source.iterdir()]
    reference = hd.get_volume_from_series(datasets)
    assert volume.voxels.shape == (5, 16, 16)
    z = [float(pydicom.dcmread(source / p.name).ImagePositionPatient[2]) for p in sorted(source.iterdir())]
    uid_by_z = {float(ds.ImagePositionPatient[2]): str(ds.SOPInstanceUID) for ds in datasets}
    assert volume.dicom is not None
    assert list(volume.dicom.slice_uids) == [uid_by_z[v] for v in sorted(z)]
    _assert_same_volume(volume, reference)


def _assert_same_volume(volume, reference: hd.Volume) -> None:
    """Our [slice, row, col] volume and affine equal highdicom's, whichever way it runs its slice axis."""
    ours = volume.geometry.affine_lps()[:, [2, 1, 0, 3]]  # reorder to highdicom's (slice, row, column) index
    theirs = reference.affine
    array = reference.array
    if np.dot(theirs[:3, 0], ours[:3, 0]) < 0:  # highdicom sorted the other way: flip its slice axis
        array = array[::-1]
        theirs = theirs.copy()
        theirs[:3, 3] = theirs[:3, 3] + theirs[:3, 0] * (array.shape[0] - 1)
        theirs[:3, 0] = -theirs[:3, 0]
    np.testing.assert_allclose(ours, theirs, atol=1e-3)
    np.testing.assert_array_equal(volume.voxels, array)


def test_synthetic_tilted_anisotropic_series_matches_highdicom(tmp_path: Path) -> None:
    series = write_synthetic_ct(tmp_path / "ct", slices=24, size=64, pixel_spacing=(0.7, 0.8), slice_spacing=2.5)
    volume = read_dicom(tmp_path / "ct")
    assert volume.geometry is not None and volume.geometry.plane is Plane.OBLIQUE
    assert volume.spacing == pytest.approx((2.5, 0.7, 0.8), abs=1e-6)
    assert volume.dicom is not None and volume.dicom.slice_uids == series.sop_uids
    np.testing.assert_allclose(volume.geometry.affine_lps(), series.geometry.affine_lps(), atol=1e-4)
    reference = hd.get_volume_from_series([pydicom.dcmread(p) for p in series.paths], apply_voi_transform=False)
    _assert_same_volume(volume, reference)


def test_sheared_stack_keeps_its_true_geometry(tmp_path: Path) -> None:
    # Gantry tilt: each slice is shifted 0.5 mm along its column direction; positions must not be squared off.
    series = write_synthetic_ct(tmp_path / "tilt", slices=12, size=32, shear_mm=(0.0, 0.5))
    volume = read_dicom(tmp_path / "tilt")
    assert volume.geometry is not None and volume.geometry.sheared
    for k, path in enumerate(series.paths):  # written in slice order
        stated = [float(v) for v in pydicom.dcmread(path).ImagePositionPatient]
        np.testing.assert_allclose(volume.geometry.position(k), stated, atol=1e-4)
    assert volume.spacing[0] == pytest.approx(2.5, abs=1e-4)  # plane distance, not the slanted step


def test_legacy_converted_enhanced_ct_reads_like_its_single_frames(tmp_path: Path) -> None:
    # highdicom converts the single-frame series into one multi-frame object; frames are ordered by position.
    series = write_synthetic_ct(tmp_path / "ct", slices=10, size=48)
    singles = [pydicom.dcmread(p) for p in series.paths]
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(
        singles,
        series_instance_uid=pydicom.uid.generate_uid(),
        series_number=2,
        sop_instance_uid=pydicom.uid.generate_uid(),
        instance_number=1,
    )
    enhanced.save_as(tmp_path / "enhanced.dcm", enforce_file_format=True)
    from_frames = read_volume(tmp_path / "enhanced.dcm")
    from_files = read_dicom(tmp_path / "ct")
    np.testing.assert_array_equal(from_frames.voxels, from_files.voxels)
    np.testing.assert_allclose(from_frames.geometry.affine_lps(), from_files.geometry.affine_lps(), atol=1e-4)
    source = from_frames.dicom
    assert source is not None and source.multiframe
    # Frame k of the volume is the stored frame its position says, not the k-th stored frame.
    per_frame = enhanced.PerFrameFunctionalGroupsSequence
    for k, frame_number in enumerate(source.frame_numbers):
        position = per_frame[frame_number - 1].PlanePositionSequence[0].ImagePositionPatient
        np.testing.assert_allclose(from_frames.geometry.position(k), [float(v) for v in position], atol=1e-4)


def test_ultrasound_cine_loop_is_read_as_grey_video() -> None:
    from PIL import Image

    ds = pydicom.dcmread(get_testdata_file("examples_ybr_color.dcm"))
    volume = read_volume(Path(get_testdata_file("examples_ybr_color.dcm")))
    assert volume.source_format == "dicom-cine" and volume.modality == "US"
    assert volume.voxels.shape == (30, 240, 320) and volume.voxels.dtype == np.uint8
    rgb = ds.pixel_array  # pydicom converts YBR_FULL_422 to RGB
    for k in (0, 17, 29):
        np.testing.assert_array_equal(volume.voxels[k], np.asarray(Image.fromarray(rgb[k]).convert("L")))
    assert volume.extras["fps"] == pytest.approx(1000.0 / float(ds.FrameTime))


def test_non_dicom_files_beside_a_series_are_skipped(tmp_path: Path) -> None:
    source = Path(get_testdata_file("dicomdirtests/98892001/CT5N/2062")).parent
    folder = shutil.copytree(source, tmp_path / "ct5n")
    (folder / "README").write_text("exported by a PACS\n")
    (folder / "notes.txt").write_text("x")
    shutil.copy(get_testdata_file("rtstruct.dcm"), folder / "rtstruct.dcm")  # a non-image object of another series
    assert read_dicom(folder).voxels.shape == (5, 16, 16)


def test_choosing_one_series_of_a_mixed_folder(tmp_path: Path) -> None:
    a = write_synthetic_ct(tmp_path / "mixed", slices=4, size=16, seed=1)
    b = write_synthetic_ct(tmp_path / "mixed", slices=6, size=16, seed=2, study_uid=a.study_uid)
    assert read_dicom(tmp_path / "mixed", series_uid=b.series_uid).voxels.shape == (6, 16, 16)
    assert read_volume(tmp_path / "mixed", series_uid=a.series_uid).voxels.shape == (4, 16, 16)
