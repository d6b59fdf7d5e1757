"""MedSAM2's 3D post-processing: keep the largest 3D connected component of a mask.

MedSAM2's ``medsam2_infer_3D_CT.py`` runs ``getLargestCC`` on each non-empty
result: ``skimage.measure.label`` (full connectivity, i.e. 26 neighbours in 3D),
then ``labels == argmax(bincount(labels.flat)[1:]) + 1``.  skimage numbers
components in raster order of their first voxel, so on a tie in size the
component met first in C order wins; this function breaks ties the same way.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

FULL_CONNECTIVITY = np.ones((3, 3, 3), bool)
"""26-connectivity in 3D (skimage's default ``connectivity=ndim``)."""


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a boolean 3D mask (the mask itself when empty or connected)."""
    mask = np.asarray(mask, bool)
    if mask.ndim != 3:
        raise ValueError(f"expected a 3-D mask [slices, rows, columns], got shape {mask.shape}")
    labels, count = ndimage.label(mask, structure=FULL_CONNECTIVITY)
    if count <= 1:
        return mask.copy()
    sizes = np.bincount(labels.ravel())[1:]
    winners = np.flatnonzero(sizes == sizes.max()) + 1
    if winners.size == 1:
        keep = int(winners[0])
    else:  # a tie: the component whose first voxel comes first in C order, as skimage's numbering gives
        firsts = [int(np.flatnonzero(labels.ravel() == w)[0]) for w in winners]
        keep = int(winners[int(np.argmin(firsts))])
    return labels == keep
