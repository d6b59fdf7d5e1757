"""Dice similarity coefficient and normalised surface distance (surface Dice at a tolerance in mm).

NSD follows the usual voxel-based surface Dice (as MONAI's ``compute_surface_dice`` computes it by default):
the surface of a mask is its voxels with a 6-connected background neighbour (voxels on the array's border
count as surface); the distance of each surface voxel of one mask to the other mask's surface is measured
in mm with the voxel spacing; NSD is the share of both surfaces, counted together, that lies within the
tolerance of the other surface. DeepMind's ``surface-distance`` weights surface elements by their area
instead; on smooth shapes the two agree closely.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """2|P∩T| / (|P|+|T|); 1 when both are empty."""
    p, t = prediction.astype(bool), truth.astype(bool)
    total = int(p.sum()) + int(t.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(p, t).sum()) / total


def surface(mask: np.ndarray) -> np.ndarray:
    """The mask's voxels that touch the background (6-connectivity) or the array's border."""
    mask = mask.astype(bool)
    eroded = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1), border_value=0)
    return mask & ~eroded


def surface_distances(from_mask: np.ndarray, to_mask: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Distance in mm from every surface voxel of ``from_mask`` to the nearest surface voxel of ``to_mask``."""
    source, target = surface(from_mask), surface(to_mask)
    if not target.any():
        return np.full(int(source.sum()), np.inf)
    distance_to_target = ndimage.distance_transform_edt(~target, sampling=tuple(float(s) for s in spacing))
    return distance_to_target[source]


def nsd(prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float], tolerance_mm: float) -> float:
    """Normalised surface distance: the share of both surfaces within ``tolerance_mm`` of the other."""
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction {prediction.shape} and truth {truth.shape} differ in shape")
    p, t = prediction.astype(bool), truth.astype(bool)
    if not p.any() and not t.any():
        return 1.0
    if not p.any() or not t.any():
        return 0.0
    pred_to_truth = surface_distances(p, t, spacing)
    truth_to_pred = surface_distances(t, p, spacing)
    within = int((pred_to_truth <= tolerance_mm).sum()) + int((truth_to_pred <= tolerance_mm).sum())
    return within / (pred_to_truth.size + truth_to_pred.size)
