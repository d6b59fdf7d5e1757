"""Volumes from NIfTI and MedSAM-style ``.npz`` files, and masks written back at the same geometry.

In memory a volume is [slices, rows, columns] (ITK order z, y, x), so a box's
x is a column and y a row of a slice.  NIfTI stores (i, j, k) = (x, y, z);
reading transposes it and writing transposes back.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medsam2.errors import InvalidInput, NotFound, OutputNotWritable

NIFTI_SUFFIXES = (".nii", ".nii.gz")
NPZ_SUFFIXES = (".npz",)


@dataclass(slots=True)
class Volume:
    """Voxels [slices, rows, columns] with spacing (z, y, x) in mm and the source's geometry."""

    voxels: np.ndarray
    spacing: tuple[float, float, float]
    source_format: str
    nifti_affine: np.ndarray | None = None
    nifti_header: Any = None
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def voxel_ml(self) -> float:
        """Volume of one voxel in millilitres."""
        return float(np.prod(self.spacing)) / 1000.0


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in (*NIFTI_SUFFIXES, *NPZ_SUFFIXES):
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


def read_volume(path: Path) -> Volume:
    """Read a NIfTI or MedSAM-style ``.npz`` volume."""
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"input volume not found: {path}")
    suffix = _suffix(path)
    if suffix in NIFTI_SUFFIXES:
        return _read_nifti(path)
    if suffix in NPZ_SUFFIXES:
        return _read_npz(path)
    raise InvalidInput(f"unsupported input {path.name}: expected .nii, .nii.gz or .npz")


def _read_nifti(path: Path) -> Volume:
    import nibabel as nib

    try:
        image = nib.load(str(path))
        data = np.asanyarray(image.dataobj)
    except Exception as exc:  # nibabel raises many types for broken files
        raise InvalidInput(f"cannot read NIfTI {path.name}: {exc}") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InvalidInput(f"NIfTI {path.name} has shape {data.shape}: expected a 3-D volume")
    zooms = image.header.get_zooms()[:3]
    return Volume(
        voxels=np.ascontiguousarray(data.transpose(2, 1, 0)),
        spacing=(float(zooms[2]), float(zooms[1]), float(zooms[0])),
        source_format="nifti",
        nifti_affine=image.affine,
        nifti_header=image.header,
    )


def _read_npz(path: Path) -> Volume:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
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


def write_mask(path: Path, labels: np.ndarray, like: Volume) -> Path:
    """Write a label map [slices, rows, columns] in the format the extension names, at ``like``'s geometry."""
    path = Path(path)
    suffix = _suffix(path)
    if suffix not in (*NIFTI_SUFFIXES, *NPZ_SUFFIXES):
        raise InvalidInput(f"unsupported output {path.name}: expected .nii, .nii.gz or .npz")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputNotWritable(f"cannot create output folder {path.parent}: {exc.strerror or exc}") from exc
    tmp = path.with_name(f".{path.name}.partial{suffix}")
    try:
        if suffix in NIFTI_SUFFIXES:
            _write_nifti(tmp, labels, like)
        else:
            np.savez_compressed(tmp, segs=labels, spacing=np.asarray(like.spacing))
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputNotWritable(f"cannot write {path}: {exc.strerror or exc}") from exc
    return path


def _write_nifti(path: Path, labels: np.ndarray, like: Volume) -> None:
    import nibabel as nib

    data = np.ascontiguousarray(labels.transpose(2, 1, 0))
    if like.nifti_affine is not None:
        header = like.nifti_header.copy()
        header.set_data_dtype(labels.dtype)
        image = nib.Nifti1Image(data, like.nifti_affine, header)
    else:
        z, y, x = like.spacing
        image = nib.Nifti1Image(data, np.diag([x, y, z, 1.0]))
    image.header.set_slope_inter(1, 0)
    nib.save(image, str(path))
