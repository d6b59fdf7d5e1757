"""A label map for an input without patient geometry lies where ITK puts such an image: origin 0, identity
direction in LPS, the pixel spacing.  Checked against SimpleITK's own reading of the same DICOM file."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom.data import get_testdata_file

from medsam2.io.volumes import Volume, itk_default_affine, read_volume, write_mask

sitk = pytest.importorskip("SimpleITK", reason="SimpleITK is in the dev extra")


def test_the_affine_is_identity_lps_for_itk() -> None:
    affine = itk_default_affine((3.0, 0.5, 0.25))
    np.testing.assert_array_equal(affine, np.diag([-0.25, -0.5, 3.0, 1.0]))  # RAS: x and y negated


@pytest.mark.parametrize("name", ["SC_rgb.dcm", "examples_palette.dcm", "JPEG2000.dcm"])
def test_a_geometry_less_dicom_lands_where_simpleitk_reads_it(name: str, tmp_path: Path) -> None:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} is in pydicom-data, which is not installed")
    volume = read_volume(Path(path))
    assert volume.geometry is None
    out = write_mask(tmp_path / "mask.nii.gz", (volume.voxels > volume.voxels.mean()).astype(np.uint8), volume)
    ours, theirs = sitk.ReadImage(str(out)), sitk.ReadImage(str(path))
    assert ours.GetSize() == theirs.GetSize()
    np.testing.assert_allclose(ours.GetDirection(), np.eye(3).ravel(), atol=1e-6)
    np.testing.assert_allclose(ours.GetDirection(), theirs.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(ours.GetOrigin(), theirs.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(ours.GetSpacing()[:2], theirs.GetSpacing()[:2], rtol=1e-6)
    # The voxels are where they were: ITK's (x, y) is our (column, row).
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ours), (volume.voxels > volume.voxels.mean()))


def test_a_video_volume_gets_the_same_convention(tmp_path: Path) -> None:
    volume = Volume(np.zeros((4, 6, 8), np.uint8), (1.0, 0.5, 0.25), "video")
    out = write_mask(tmp_path / "video.nii.gz", np.ones((4, 6, 8), np.uint8), volume)
    image = sitk.ReadImage(str(out))
    assert image.GetSize() == (8, 6, 4)
    np.testing.assert_allclose(image.GetDirection(), np.eye(3).ravel(), atol=1e-6)
    np.testing.assert_allclose(image.GetSpacing(), (0.25, 0.5, 1.0))
    np.testing.assert_allclose(image.GetOrigin(), (0.0, 0.0, 0.0))
    assert nib.load(str(out)).header.get_sform(coded=True)[1] == 2
