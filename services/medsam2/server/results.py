"""The segmentation of a session: one bit-packed mask per object and slice, at the study's size."""

from __future__ import annotations

import numpy as np

from medsam2.engine.tracker import FrameResult


class ResultStore:
    """Masks per object, stored bit-packed (1 bit per voxel) so large studies stay small."""

    def __init__(self, num_slices: int, rows: int, columns: int) -> None:
        self.shape = (num_slices, rows, columns)
        self._masks: dict[int, np.ndarray] = {}  # object id -> [slices, packed bytes]

    def _planes(self, obj_id: int) -> np.ndarray:
        if obj_id not in self._masks:
            self._masks[obj_id] = np.zeros((self.shape[0], (self.shape[1] * self.shape[2] + 7) // 8), np.uint8)
        return self._masks[obj_id]

    def set_slice(self, obj_id: int, slice_index: int, mask: np.ndarray, union: bool = False) -> None:
        """Store one object's mask on one slice (or OR it into what is there)."""
        packed = np.packbits(mask.ravel())
        planes = self._planes(obj_id)
        planes[slice_index] = planes[slice_index] | packed if union else packed

    def store(self, result: FrameResult, masks: np.ndarray, union: bool = False) -> None:
        """Store every object's mask of one frame result."""
        for obj_id, mask in zip(result.obj_ids, masks):
            self.set_slice(obj_id, result.frame, mask, union)

    def clear(self, obj_ids: list[int] | None = None) -> None:
        """Forget some objects' masks, or all."""
        if obj_ids is None:
            self._masks.clear()
        for obj_id in obj_ids or []:
            self._masks.pop(obj_id, None)

    @property
    def object_ids(self) -> list[int]:
        """Objects with stored masks, in id order."""
        return sorted(self._masks)

    def labels(self) -> np.ndarray:
        """uint16 label volume: label i+1 is the i-th object id; later objects win overlaps."""
        out = np.zeros(self.shape, np.uint16)
        voxels = self.shape[1] * self.shape[2]
        for label, obj_id in enumerate(self.object_ids, start=1):
            bits = np.unpackbits(self._masks[obj_id], axis=1, count=voxels).astype(bool)
            out[bits.reshape(self.shape)] = label
        return out

    @property
    def nbytes(self) -> int:
        """Bytes held."""
        return sum(m.nbytes for m in self._masks.values())
