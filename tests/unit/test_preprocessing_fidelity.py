"""Preprocessing equals MedSAM2's script bit for bit, and the largest-component step is MedSAM2's.

The reference functions below restate the lines of MedSAM2's ``medsam2_infer_3D_CT.py``
(nibabel ``get_fdata`` gives float64; clip; min-max of the clipped volume; ``np.uint8``)
independently of ``imaging/windowing.py``.
"""

from __future__ import annotations

import warnings
from collections import deque
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medsam2.engine.components import largest_component
from medsam2.imaging.windowing import (
    CT_WINDOWS,
    Preset,
    Window,
    apply_percentiles,
    apply_window,
    clip_and_scale,
    resolve_preset,
    to_uint8,
)
from medsam2.io.volumes import read_volume


def script_ct(volume: np.ndarray, lower: float, upper: float) -> np.ndarray:
    """MedSAM2's CT lines."""
    image_data_pre = np.clip(volume.astype(np.float64), lower, upper)
    image_data_pre = (
        (image_data_pre - np.min(image_data_pre)) / (np.max(image_data_pre) - np.min(image_data_pre)) * 255.0
    )
    return np.uint8(image_data_pre)


def script_mr(volume: np.ndarray) -> np.ndarray:
    """MedSAM2's MR/PET lines: percentiles of the voxels > 0, then the same scaling."""
    data = volume.astype(np.float64)
    lower_bound = np.percentile(data[data > 0], 0.5)
    upper_bound = np.percentile(data[data > 0], 99.5)
    return script_ct(data, lower_bound, upper_bound)


def _ct_not_spanning_the_window(seed: int = 3) -> np.ndarray:
    """Soft tissue only, -95..180 HU: never reaches the abdomen window's -160 or 240."""
    rng = np.random.default_rng(seed)
    return rng.integers(-95, 181, (6, 37, 41)).astype(np.int16)


def test_ct_equals_the_script_on_a_volume_inside_the_window() -> None:
    volume = _ct_not_spanning_the_window()
    window = CT_WINDOWS["abdomen"]
    expected = script_ct(volume, window.level - window.width / 2, window.level + window.width / 2)
    got = to_uint8(volume, "auto", modality="CT")
    assert got.dtype == np.uint8 and np.array_equal(got, expected)
    assert got.min() == 0 and got.max() == 255  # stretched: min-max of the clipped volume, not the window
    plain_window = np.uint8((np.clip(volume, -160, 240) + 160) / 400 * 255.0)
    assert not np.array_equal(got, plain_window)
    rounded = np.round((volume.astype(np.float64) + 95) / 275 * 255).astype(np.uint8)
    assert not np.array_equal(got, rounded)  # the cast truncates


def test_ct_from_a_nifti_file_equals_the_script_on_get_fdata(tmp_path: Path) -> None:
    volume = _ct_not_spanning_the_window(seed=8)
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(volume.transpose(2, 1, 0), np.diag([0.8, 0.8, 2.5, 1.0])), path)
    script_input = nib.load(path).get_fdata().transpose(2, 1, 0)  # what the script reads, in our axis order
    read = read_volume(path)
    expected = script_ct(script_input, -160, 240)
    assert np.array_equal(to_uint8(read.voxels, "abdomen"), expected)


@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.float64])
def test_every_preset_and_window_equals_the_script(dtype: type) -> None:
    rng = np.random.default_rng(11)
    volume = (rng.normal(-300, 500, (5, 23, 29))).astype(dtype)
    for name, window in CT_WINDOWS.items():
        expected = script_ct(volume, window.level - window.width / 2, window.level + window.width / 2)
        assert np.array_equal(to_uint8(volume, name), expected), name
    custom = Window(350, 55.5)
    assert np.array_equal(to_uint8(volume, window=custom), script_ct(volume, 55.5 - 175, 55.5 + 175))


def test_blocks_of_slices_give_the_same_bits() -> None:
    volume = np.random.default_rng(2).normal(0, 300, (9, 17, 19)).astype(np.float32)
    whole = clip_and_scale(volume, -160, 240, chunk_voxels=1 << 30)
    assert np.array_equal(clip_and_scale(volume, -160, 240, chunk_voxels=17 * 19 * 2), whole)
    assert np.array_equal(whole, script_ct(volume, -160, 240))


def test_mr_and_pet_use_percentiles_of_the_voxels_above_zero() -> None:
    rng = np.random.default_rng(4)
    volume = rng.gamma(2.0, 180.0, (6, 31, 27)).astype(np.float32)
    volume[:, :4] = 0  # background
    volume[:, -3:] = -40  # negative values are not foreground either (voxels > 0, not != 0)
    expected = script_mr(volume)
    assert np.array_equal(to_uint8(volume, "auto", modality="MR"), expected)
    assert np.array_equal(to_uint8(volume, "auto", modality="PT"), expected)
    assert np.array_equal(apply_percentiles(volume.astype(np.int16)), script_mr(volume.astype(np.int16)))


def test_constant_volumes_give_zeros_without_nan() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a 0/0 would warn
        assert not apply_window(np.full((2, 3, 3), 40, np.int16), CT_WINDOWS["abdomen"]).any()
        assert not apply_window(np.full((2, 3, 3), 5000, np.int16), CT_WINDOWS["abdomen"]).any()
        assert not apply_percentiles(np.full((2, 3, 3), 7.0)).any()
        assert not apply_percentiles(np.zeros((2, 3, 3))).any()


@pytest.mark.parametrize(
    ("preset", "modality", "dtype", "is_video", "expected"),
    [
        ("auto", "CT", np.int16, False, Preset.ABDOMEN),
        ("auto", " ct ", np.int16, False, Preset.ABDOMEN),
        ("auto", "MR", np.uint16, False, Preset.PERCENTILE),
        ("auto", "PT", np.float32, False, Preset.PERCENTILE),
        ("auto", None, np.int16, False, Preset.PERCENTILE),
        ("auto", "", np.uint8, False, Preset.NONE),
        ("auto", None, np.uint8, True, Preset.NONE),
        ("auto", None, np.uint16, True, Preset.PERCENTILE),
        ("auto", "US", None, True, Preset.NONE),
        ("lung", "MR", np.int16, False, Preset.LUNG),
    ],
)
def test_auto_resolves_one_way(
    preset: str, modality: str | None, dtype: type | None, is_video: bool, expected: Preset
) -> None:
    assert resolve_preset(preset, modality, None if dtype is None else np.dtype(dtype), is_video=is_video) is expected


# -- largest 3D connected component -----------------------------------------------------------


def _components_by_flood_fill(mask: np.ndarray) -> list[list[tuple[int, int, int]]]:
    """26-connected components in raster order of their first voxel (what skimage.measure.label numbers)."""
    seen = np.zeros(mask.shape, bool)
    offsets = [(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1) if (a, b, c) != (0, 0, 0)]
    components = []
    for start in zip(*np.nonzero(mask), strict=False):
        if seen[start]:
            continue
        seen[start] = True
        queue, voxels = deque([start]), []
        while queue:
            z, y, x = queue.popleft()
            voxels.append((z, y, x))
            for dz, dy, dx in offsets:
                n = (z + dz, y + dy, x + dx)
                if all(0 <= n[i] < mask.shape[i] for i in range(3)) and mask[n] and not seen[n]:
                    seen[n] = True
                    queue.append(n)
        components.append(voxels)
    return components


def _script_largest(mask: np.ndarray) -> np.ndarray:
    """MedSAM2's getLargestCC: labels == argmax(bincount(labels)[1:]) + 1, labels numbered in raster order."""
    components = _components_by_flood_fill(mask)
    sizes = [len(c) for c in components]
    keep = np.zeros(mask.shape, bool)
    for voxel in components[int(np.argmax(sizes))]:
        keep[voxel] = True
    return keep


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_largest_component_equals_the_script(seed: int) -> None:
    mask = np.random.default_rng(seed).random((7, 12, 13)) > 0.78
    assert len(_components_by_flood_fill(mask)) > 3
    assert np.array_equal(largest_component(mask), _script_largest(mask))


def test_largest_component_connects_through_corners_and_breaks_ties_in_raster_order() -> None:
    mask = np.zeros((4, 6, 6), bool)
    mask[0, 0, 0] = mask[1, 1, 1] = mask[2, 2, 2] = True  # corner to corner: one 26-connected component of 3
    mask[0, 4, 4] = mask[0, 4, 5] = True
    mask[3, 0, 5] = True
    expected = np.zeros_like(mask)
    expected[0, 0, 0] = expected[1, 1, 1] = expected[2, 2, 2] = True
    assert np.array_equal(largest_component(mask), expected)
    tie = np.zeros((2, 5, 5), bool)
    tie[1, 0, 0:2] = True  # first in C order: slice 1 comes after slice 0 ...
    tie[0, 4, 3:5] = True  # ... so this one is met first and wins the tie
    assert np.array_equal(largest_component(tie), _script_largest(tie))
    assert largest_component(tie)[0, 4, 3]
    assert not largest_component(np.zeros((2, 2, 2), bool)).any()
