"""sam2's non-overlapping constraint: each pixel belongs to at most one object.

``SAM2VideoPredictor`` (``non_overlap_masks=True``, as MedSAM2's video script builds it) applies
``_apply_non_overlapping_constraints`` to the logits after they are resized to the video's resolution, only on
what it returns: the stored outputs and the memories stay per object.  At each pixel the object with the largest
logit keeps it; every other object's logit is clamped to at most -10.  On equal logits the first object (in the
order objects were added) wins, as ``torch.argmax`` returns the first maximum.
"""

from __future__ import annotations

import numpy as np

SUPPRESSED_LOGIT = np.float32(-10.0)


def apply_non_overlapping(logits: np.ndarray) -> np.ndarray:
    """Logits [K, ...] of K objects with every pixel's non-maximal objects clamped to <= -10 (a copy)."""
    if logits.shape[0] <= 1:
        return logits
    winner = np.argmax(logits, axis=0)
    keep = winner[None] == np.arange(logits.shape[0]).reshape(-1, *([1] * winner.ndim))
    return np.where(keep, logits, np.minimum(logits, SUPPRESSED_LOGIT)).astype(logits.dtype, copy=False)
