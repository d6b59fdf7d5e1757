"""sam2's hole filling, without its CUDA extension: small background islands become foreground.

sam2 labels 8-connected components of the background (logits <= 0) and sets
those with an area <= ``max_area`` to a small positive logit (0.1).  Components
touching the border count too, as in sam2.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

FILL_VALUE = np.float32(0.1)
EIGHT_CONNECTED = np.ones((3, 3), bool)


def fill_holes(logits: np.ndarray, max_area: int) -> np.ndarray:
    """Return ``logits`` [..., H, W] with background components of area <= ``max_area`` set to 0.1."""
    if max_area <= 0:
        return logits
    out = logits.copy()
    flat = out.reshape(-1, *out.shape[-2:])
    for plane in flat:
        labels, count = ndimage.label(plane <= 0, structure=EIGHT_CONNECTED)
        if count == 0:
            continue
        areas = np.bincount(labels.ravel(), minlength=count + 1)
        small = areas <= max_area
        small[0] = False  # label 0 is the foreground
        plane[small[labels]] = FILL_VALUE
    return out
