"""Image features per frame, kept in an LRU bounded by bytes, with pinned frames that are never evicted."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class FrameFeatures:
    """The image encoder's outputs for one frame, each with a batch axis of 1."""

    feat_s0: np.ndarray
    feat_s1: np.ndarray
    feat_s2: np.ndarray

    @property
    def nbytes(self) -> int:
        """Bytes held by the three arrays."""
        return self.feat_s0.nbytes + self.feat_s1.nbytes + self.feat_s2.nbytes


class FeatureCache:
    """LRU of ``FrameFeatures`` by frame index; ``encode`` fills misses."""

    def __init__(self, encode: Callable[[int], FrameFeatures], max_bytes: int) -> None:
        self._encode = encode
        self._max_bytes = max_bytes
        self._entries: OrderedDict[int, FrameFeatures] = OrderedDict()
        self._pinned: set[int] = set()
        self._bytes = 0
        self.encoded = 0
        """How many frames were encoded (misses), for tests and benchmarks."""

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        """Bytes currently cached."""
        return self._bytes

    def get(self, frame: int) -> FrameFeatures:
        """Features of ``frame``, encoding it on a miss."""
        hit = self._entries.get(frame)
        if hit is not None:
            self._entries.move_to_end(frame)
            return hit
        features = self._encode(frame)
        self.encoded += 1
        self._entries[frame] = features
        self._bytes += features.nbytes
        self._evict()
        return features

    def pin(self, frame: int) -> None:
        """Never evict ``frame`` (a prompted frame is needed again by every pass)."""
        self._pinned.add(frame)

    def unpin_all(self) -> None:
        """Let every frame be evicted again."""
        self._pinned.clear()
        self._evict()

    def clear(self) -> None:
        """Drop every cached frame."""
        self._entries.clear()
        self._pinned.clear()
        self._bytes = 0

    def _evict(self) -> None:
        for frame in list(self._entries):
            if self._bytes <= self._max_bytes:
                return
            # The newest entry stays even over budget: it is about to be used.
            if frame in self._pinned or frame == next(reversed(self._entries)):
                continue
            self._bytes -= self._entries.pop(frame).nbytes
