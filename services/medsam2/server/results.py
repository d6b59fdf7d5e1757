"""The segmentation of a session: one bit-packed mask per object and slice, at the study's size."""

from __future__ import annotations

import gzip
import io
import zlib
from collections.abc import Iterator

import numpy as np

from medsam2.engine.tracker import FrameResult
from medsam2.io.geometry import Geometry
from medsam2.io.labels import NIFTI_EXTENSION_CODE, LabelValues, build_labels


class ResultStore:
    """Masks per object, stored bit-packed (1 bit per voxel) so large studies stay small."""

    def __init__(self, num_slices: int, rows: int, columns: int) -> None:
        self.shape = (num_slices, rows, columns)
        self._masks: dict[int, np.ndarray] = {}  # object id -> [slices, packed bytes]
        self.version = 0
        """Counts changes, so results derived from the masks (SEG, SR) can be cached until the next one."""

    def _planes(self, obj_id: int) -> np.ndarray:
        if obj_id not in self._masks:
            self._masks[obj_id] = np.zeros((self.shape[0], (self.shape[1] * self.shape[2] + 7) // 8), np.uint8)
        return self._masks[obj_id]

    def set_slice(self, obj_id: int, slice_index: int, mask: np.ndarray, union: bool = False) -> None:
        """Store one object's mask on one slice (or OR it into what is there)."""
        packed = np.packbits(mask.ravel())
        self.version += 1
        planes = self._planes(obj_id)
        planes[slice_index] = planes[slice_index] | packed if union else packed

    def store(self, result: FrameResult, masks: np.ndarray, union: bool = False) -> None:
        """Store every object's mask of one frame result."""
        for obj_id, mask in zip(result.obj_ids, masks, strict=False):
            self.set_slice(obj_id, result.frame, mask, union)

    def set_object(self, obj_id: int, mask: np.ndarray) -> None:
        """Replace one object's whole mask [slices, rows, columns]."""
        if mask.shape != self.shape:
            raise ValueError(f"object {obj_id}'s mask has shape {mask.shape}, the study {self.shape}")
        self.version += 1
        self._masks[obj_id] = np.packbits(np.asarray(mask, bool).reshape(self.shape[0], -1), axis=1)

    def masks(self) -> dict[int, np.ndarray]:
        """Every object's boolean mask [slices, rows, columns]."""
        voxels = self.shape[1] * self.shape[2]
        return {
            obj_id: np.unpackbits(planes, axis=1, count=voxels).astype(bool).reshape(self.shape)
            for obj_id, planes in sorted(self._masks.items())
        }

    def clear(self, obj_ids: list[int] | None = None) -> None:
        """Forget some objects' masks, or all."""
        self.version += 1
        if obj_ids is None:
            self._masks.clear()
        for obj_id in obj_ids or []:
            self._masks.pop(obj_id, None)

    def snapshot(self) -> dict[int, np.ndarray]:
        """The masks as they are now, for ``restore`` (bit-packed copies: 1 bit per voxel and object)."""
        return {obj_id: planes.copy() for obj_id, planes in self._masks.items()}

    def restore(self, snapshot: dict[int, np.ndarray]) -> None:
        """Put back the masks a ``snapshot`` took (counted as a change, so nothing derived is reused)."""
        self.version += 1
        self._masks = {obj_id: planes.copy() for obj_id, planes in snapshot.items()}

    @property
    def object_ids(self) -> list[int]:
        """Objects with stored masks, in id order."""
        return sorted(self._masks)

    def labels(self, values: LabelValues = LabelValues.RANKS) -> np.ndarray:
        """uint16 label volume by ``io.labels``' one overlap rule (fewer voxels wins); values ranks or object ids."""
        return build_labels(self.masks(), self.shape, values)

    def slice_masks(self, slice_index: int) -> dict[int, np.ndarray]:
        """Every object's stored mask [rows, columns] on one slice."""
        voxels = self.shape[1] * self.shape[2]
        return {
            obj_id: np.unpackbits(planes[slice_index], count=voxels).astype(bool).reshape(self.shape[1:])
            for obj_id, planes in sorted(self._masks.items())
        }

    @property
    def nbytes(self) -> int:
        """Bytes held."""
        return sum(m.nbytes for m in self._masks.values())


def encode_labels(
    labels: np.ndarray,
    spacing: tuple[float, float, float],
    geometry: Geometry | None,
    fmt: str,
    *,
    label_map: str = "",
) -> bytes:
    """A label volume as 'npz', 'nifti_gz' (with the study's affine when known) or 'raw' bytes.

    ``label_map`` (``io.labels.label_map_json``) travels inside: the npz key 'labels', a NIfTI JSON extension.
    """
    if fmt == "raw":
        return labels.astype("<u2").tobytes()
    if fmt == "nifti_gz":
        return nifti_gz(labels, spacing, geometry, label_map=label_map)
    buffer = io.BytesIO()
    extra = {"labels": np.asarray(label_map)} if label_map else {}
    np.savez_compressed(buffer, segs=labels, spacing=np.asarray(spacing), **extra)  # type: ignore[arg-type]
    return buffer.getvalue()


def nifti_gz(
    volume: np.ndarray,
    spacing: tuple[float, float, float],
    geometry: Geometry | None,
    *,
    compresslevel: int = 6,
    label_map: str = "",
) -> bytes:
    """A volume [slices, rows, columns] as gzipped NIfTI-1, with the study's affine when known (else its spacing)."""
    import nibabel as nib

    # NIfTI keeps columns fastest: [x, y, z] in Fortran order is the same bytes as [z, y, x] in C order.
    data = np.ascontiguousarray(volume).transpose(2, 1, 0, *range(3, volume.ndim))
    if geometry is not None:
        image = nib.Nifti1Image(data, geometry.affine_ras())
        image.set_sform(geometry.affine_ras(), code=1)  # scanner coordinates, as the DICOM source states
    else:
        z, y, x = spacing
        image = nib.Nifti1Image(data, np.diag([x, y, z, 1.0]))
    if label_map:
        image.header.extensions.append(nib.nifti1.Nifti1Extension(NIFTI_EXTENSION_CODE, label_map.encode()))
    return gzip.compress(image.to_bytes(), compresslevel=compresslevel, mtime=0)  # same study, same bytes


def nifti_gz_pieces(
    volume: np.ndarray,
    spacing: tuple[float, float, float],
    geometry: Geometry | None,
    *,
    compresslevel: int = 6,
) -> Iterator[bytes]:
    """``nifti_gz``'s file in pieces, compressed slab by slab from ``volume`` (never a whole copy of it).

    The same NIfTI-1 header and voxel bytes as ``nifti_gz``; the gzip stream is zlib's (mtime 0), so the bytes
    differ from ``gzip.compress``'s only in the header's OS byte, and are the same on every call.
    """
    import nibabel as nib

    data = volume.transpose(2, 1, 0, *range(3, volume.ndim))  # a view: NIfTI keeps columns fastest
    affine = geometry.affine_ras() if geometry is not None else np.diag([spacing[2], spacing[1], spacing[0], 1.0])
    image = nib.Nifti1Image(data, affine)
    if geometry is not None:
        image.set_sform(affine, code=1)
    image.update_header()
    header = image.header
    header.set_data_offset(352)
    header.set_slope_inter(1.0, 0.0)  # the voxels go out as they are, as nibabel writes an unscaled array
    head = io.BytesIO()
    header.write_to(head)
    head.write(b"\0" * (352 - head.tell()))  # the extension flag (none) and padding up to vox_offset
    packer = zlib.compressobj(compresslevel, zlib.DEFLATED, 31)  # 31: a gzip stream
    yield packer.compress(head.getvalue())
    dtype = header.get_data_dtype()
    # The file's voxels are x fastest, then y, then z (then channels): one [rows, columns] slab at a time.
    for index in np.ndindex(*reversed(data.shape[2:])):
        slab = volume[(index[-1], slice(None), slice(None), *reversed(index[:-1]))]
        piece = packer.compress(np.ascontiguousarray(slab, dtype=dtype).tobytes())
        if piece:
            yield piece
    yield packer.flush()


def encode_object_masks(masks: dict[int, np.ndarray], spacing: tuple[float, float, float]) -> bytes:
    """An .npz with one bool array 'object_<id>' per object (overlaps kept) and 'spacing'."""
    buffer = io.BytesIO()
    arrays: dict[str, np.ndarray] = {f"object_{i}": m for i, m in masks.items()}
    np.savez_compressed(buffer, spacing=np.asarray(spacing), **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()
