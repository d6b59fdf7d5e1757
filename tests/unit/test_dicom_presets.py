"""The intensity preset follows the DICOM Modality unless the caller overrides it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from medsam2.errors import InvalidInput
from medsam2.imaging.windowing import CT_WINDOWS, Preset, apply_percentiles, apply_window, resolve_preset, to_uint8
from medsam2.io.volumes import read_volume


@pytest.mark.parametrize(
    ("modality", "dtype", "expected"),
    [
        ("CT", np.int16, Preset.ABDOMEN),
        ("MR", np.int16, Preset.PERCENTILE),
        ("PT", np.float32, Preset.PERCENTILE),
        ("US", np.uint8, Preset.NONE),
        ("XC", np.uint8, Preset.NONE),
        ("ES", np.uint8, Preset.NONE),
        ("US", np.uint16, Preset.PERCENTILE),  # 'none' needs 0..255
        (None, np.uint8, Preset.NONE),
        (None, np.float32, Preset.PERCENTILE),
        ("SM", np.int16, Preset.PERCENTILE),  # unknown modality: by data type
    ],
)
def test_auto_preset_by_modality(modality: str | None, dtype: type, expected: Preset) -> None:
    assert resolve_preset("auto", modality, np.dtype(dtype)) is expected


def test_an_explicit_preset_overrides_the_modality() -> None:
    assert resolve_preset("lung", "CT", np.dtype(np.int16)) is Preset.LUNG
    assert resolve_preset(Preset.PERCENTILE, "CT", np.dtype(np.int16)) is Preset.PERCENTILE


def test_unknown_preset_lists_the_choices() -> None:
    with pytest.raises(InvalidInput, match="unknown intensity preset 'soft': choose one of auto, brain"):
        resolve_preset("soft", "CT", np.dtype(np.int16))


def test_real_ct_gets_the_abdomen_window_and_real_mr_percentiles() -> None:
    ct = read_volume(Path(get_testdata_file("CT_small.dcm")))
    abdomen = apply_window(ct.voxels, CT_WINDOWS["abdomen"])
    np.testing.assert_array_equal(to_uint8(ct.voxels, modality=ct.modality), abdomen)
    mr = read_volume(Path(get_testdata_file("MR_small.dcm")))
    np.testing.assert_array_equal(to_uint8(mr.voxels, modality=mr.modality), apply_percentiles(mr.voxels))


def test_ultrasound_cine_is_unchanged() -> None:
    us = read_volume(Path(get_testdata_file("examples_ybr_color.dcm")))
    np.testing.assert_array_equal(to_uint8(us.voxels, modality=us.modality), us.voxels)
