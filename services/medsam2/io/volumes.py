"""Volumes from NIfTI, MedSAM-style ``.npz``, DICOM and video, and masks written back at the same geometry.

In memory a volume is [slices, rows, columns] (ITK order z, y, x), so a box's
x is a column and y a row of a slice.  NIfTI stores (i, j, k) = (x, y, z);
reading transposes it and writing transposes back.  ``read_volume`` picks the
reader from the path: a folder of DICOM files (or of png/jpg frames), a DICOM
file, a video file, NIfTI or ``.npz``.

A 4-D NIfTI (a time series such as nibabel's ``example4d.nii.gz``) is refused
with an error naming its shape: MedSAM2 segments one 3-D volume, and which
time point to take is the caller's choice, not the reader's.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from medsam2.errors import InvalidInput, NotFound
from medsam2.io import dicom_series, video
from medsam2.io.atomic import write_atomic
from medsam2.io.geometry import Geometry
from medsam2.io.volume import Volume

NIFTI_SUFFIXES = (".nii", ".nii.gz")
NPZ_SUFFIXES = (".npz",)


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in (*NIFTI_SUFFIXES, *NPZ_SUFFIXES):
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


def read_volume(path: Path, series_uid: str | None = None) -> Volume:
    """Read a volume: DICOM folder or file, video, frame folder, NIfTI or MedSAM-style ``.npz`` (the one dispatch)."""
    path = Path(path)
    if path.is_dir():
        if video.is_frame_folder(path):
            return video.read_frame_folder(path)
        return dicom_series.read_dicom(path, series_uid)
    if not path.is_file():
        raise NotFound(f"input volume not found: {path}")
    suffix = _suffix(path)
    if suffix in NIFTI_SUFFIXES:
        return _read_nifti(path)
    if suffix in NPZ_SUFFIXES:
        return _read_npz(path)
    if suffix in video.VIDEO_SUFFIXES:
        return video.read_video_file(path)
    return dicom_series.read_dicom(path, series_uid)


def _read_nifti(path: Path) -> Volume:
    import nibabel as nib

    try:
        image = nib.load(str(path))
        data = np.asanyarray(image.dataobj)
    except Exception as exc:  # nibabel raises many types for broken files
        raise InvalidInput(f"cannot read NIfTI {path.name}: {exc}") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim == 4:
        raise InvalidInput(
            f"NIfTI {path.name} is 4-D, shape {data.shape} ({data.shape[3]} volumes): MedSAM2 segments one 3-D "
            "volume; extract the time point you want first (e.g. nibabel's image.slicer[..., 0])"
        )
    if data.ndim != 3:
        raise InvalidInput(f"NIfTI {path.name} has shape {data.shape}: expected a 3-D volume")
    zooms = image.header.get_zooms()[:3]
    try:
        geometry = Geometry.from_nifti_affine(image.affine)
    except InvalidInput:
        geometry = None  # a degenerate affine: keep the file's own header for writing, no patient geometry
    return Volume(
        voxels=np.ascontiguousarray(data.transpose(2, 1, 0)),
        spacing=(float(zooms[2]), float(zooms[1]), float(zooms[0])),
        source_format="nifti",
        nifti_affine=image.affine,
        nifti_header=image.header,
        geometry=geometry,
    )


def _read_npz(path: Path) -> Volume:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (
        zipfile.BadZipFile,
        ValueError,
        OSError,
        EOFError,
        NotImplementedError,
        RuntimeError,
        KeyError,
        MemoryError,
    ) as exc:  # zipfile and numpy report broken archives with all of these (found by fuzzing)
        raise InvalidInput(f"cannot read {path.name} as .npz: {exc}") from exc
    if "imgs" not in arrays:
        raise InvalidInput(f"{path.name} has no 'imgs' array (MedSAM-style .npz): found {sorted(arrays)}")
    imgs = arrays.pop("imgs")
    if imgs.ndim != 3:
        raise InvalidInput(f"{path.name}: 'imgs' has shape {imgs.shape}, expected [slices, rows, columns]")
    spacing = arrays.pop("spacing", np.ones(3))
    spacing = np.asarray(spacing, np.float64).reshape(-1)
    if spacing.shape != (3,) or not np.all(spacing > 0):
        raise InvalidInput(f"{path.name}: 'spacing' must be three positive numbers (z, y, x), got {spacing}")
    return Volume(imgs, tuple(float(s) for s in spacing), "npz", extras=arrays)


def check_mask_geometry(like: Volume) -> None:
    """Refuse (before any work) a volume whose spacing no label map can carry: zero, negative or not finite."""
    spacing = np.asarray(like.spacing, float)
    if spacing.shape != (3,) or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise InvalidInput(
            f"the volume's voxel spacing (slice, row, column) is {list(like.spacing)} mm: a label map needs three "
            "positive sizes"
        )


def itk_default_affine(spacing: tuple[float, float, float]) -> np.ndarray:
    """NIfTI affine of a volume without patient geometry, as ITK places one: origin 0, identity direction in LPS.

    ITK turns a NIfTI's RAS affine into LPS by negating x and y, so identity in LPS is diag(-x, -y, z) in RAS.
    """
    z, y, x = spacing
    return np.diag([-x, -y, z, 1.0])


def write_mask(path: Path, labels: np.ndarray, like: Volume, *, label_map: str = "") -> Path:
    """Write a label map [slices, rows, columns] in the format the extension names, at ``like``'s geometry.

    ``label_map`` (``io.labels.label_map_json``) travels inside: a NIfTI JSON extension, or the npz key 'labels'.
    """
    path = Path(path)
    suffix = _suffix(path)
    if suffix not in (*NIFTI_SUFFIXES, *NPZ_SUFFIXES):
        raise InvalidInput(f"unsupported output {path.name}: expected .nii, .nii.gz or .npz")

    def write(tmp: Path) -> None:
        if suffix in NIFTI_SUFFIXES:
            _write_nifti(tmp, labels, like, label_map)
        else:
            extra = {"labels": np.asarray(label_map)} if label_map else {}
            np.savez_compressed(tmp, segs=labels, spacing=np.asarray(like.spacing), **extra)  # type: ignore[arg-type]

    return write_atomic(path, write)


def _write_nifti(path: Path, labels: np.ndarray, like: Volume, label_map: str = "") -> None:
    import nibabel as nib

    data = np.ascontiguousarray(labels.transpose(2, 1, 0))
    if like.nifti_affine is not None:
        header = like.nifti_header.copy()
        header.set_data_dtype(labels.dtype)
        image = nib.Nifti1Image(data, like.nifti_affine, header)
    elif like.geometry is not None:
        # sform and qform both; qform cannot hold a shear, so nibabel then keeps the sform authoritative.
        image = nib.Nifti1Image(data, like.geometry.affine_ras())
        image.set_sform(like.geometry.affine_ras(), code=1)
    else:
        affine = itk_default_affine(like.spacing)
        image = nib.Nifti1Image(data, affine)
        image.set_sform(affine, code=2)  # aligned to the image's own frame (NIFTI_XFORM_ALIGNED_ANAT), not scanner
        image.set_qform(affine, code=2)
    image.header.set_slope_inter(1, 0)
    if label_map:
        from medsam2.io.labels import NIFTI_EXTENSION_CODE

        image.header.extensions.append(nib.nifti1.Nifti1Extension(NIFTI_EXTENSION_CODE, label_map.encode()))
    nib.save(image, str(path))
