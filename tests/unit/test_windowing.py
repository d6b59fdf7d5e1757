"""CT windows and MR percentiles to uint8, and volumes that must be refused."""

from __future__ import annotations

import numpy as np
import pytest

from medsam2.errors import InvalidInput
from medsam2.imaging.windowing import CT_WINDOWS, Window, apply_window, to_uint8


def test_ct_window_maps_level_to_mid_grey() -> None:
    hu = np.array([[[-1000.0, 40.0, 240.0, 3000.0]]])
    out = apply_window(hu, CT_WINDOWS["abdomen"])  # 400/40: -160..240
    # 200/400 * 255 = 127.5: MedSAM2's np.uint8 truncates to 127 (rounding gave 128 before).
    assert out.tolist() == [[[0, 127, 255, 255]]]


def test_percentile_ignores_background() -> None:
    vol = np.zeros((2, 10, 10), np.float32)
    vol[:, 2:8, 2:8] = np.linspace(100, 200, 72).reshape(2, 6, 6)
    out = to_uint8(vol, "percentile")
    assert out[0, 0, 0] == 0 and out.max() == 255


@pytest.mark.parametrize(
    ("volume", "message"),
    [
        (np.full((2, 4, 4), np.nan, np.float32), "NaN or infinite"),
        (np.array([[[1.0, np.inf]]]), "NaN or infinite values \\(first on slice 0\\)"),
        (np.zeros((0, 4, 4)), "zero slices"),
        (np.zeros((4, 4)), "3-D"),
    ],
)
def test_bad_volumes(volume: np.ndarray, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        to_uint8(volume, "abdomen")


def test_custom_window_must_be_positive() -> None:
    with pytest.raises(InvalidInput, match="width must be positive"):
        to_uint8(np.zeros((1, 2, 2)), window=Window(0, 40))
