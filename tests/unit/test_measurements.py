"""Volume and RECIST diameters in physical units, checked against shapes whose sizes are known exactly."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from medsam2.errors import InvalidInput
from medsam2.io.measurements import measure, measure_all, write_measurements


def ellipse(
    shape: tuple[int, int], spacing: tuple[float, float], a_mm: float, b_mm: float, angle_deg: float = 0.0
) -> np.ndarray:
    """Pixels whose centres lie in an ellipse with semi-axes a (along x, rotated) and b, centred."""
    dy, dx = spacing
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    y = (rows - (shape[0] - 1) / 2) * dy
    x = (cols - (shape[1] - 1) / 2) * dx
    t = np.deg2rad(angle_deg)
    u = x * np.cos(t) + y * np.sin(t)
    v = -x * np.sin(t) + y * np.cos(t)
    return (u / a_mm) ** 2 + (v / b_mm) ** 2 <= 1


def test_box_volume_in_millilitres() -> None:
    mask = np.zeros((10, 20, 20), bool)
    mask[2:6, 5:15, 4:14] = True  # 4 x 10 x 10 voxels of 2.5 x 0.7 x 0.8 mm
    result = measure(mask, (2.5, 0.7, 0.8))
    assert result.voxels == 400
    assert result.volume_ml == pytest.approx(400 * 2.5 * 0.7 * 0.8 / 1000)
    assert result.slices == (2, 5)


def test_rectangle_long_axis_is_its_diagonal_in_mm() -> None:
    mask = np.zeros((1, 40, 40), bool)
    mask[0, 10:30, 5:35] = True  # 20 rows x 30 columns of 0.5 x 0.8 mm = 10 mm x 24 mm
    recist = measure(mask, (1.0, 0.5, 0.8)).recist
    assert recist.long_axis_mm == pytest.approx(math.hypot(10, 24), abs=1e-6)
    assert recist.long_axis_endpoints in (
        ((9.5, 4.5), (29.5, 34.5)),
        ((29.5, 34.5), (9.5, 4.5)),
        ((9.5, 34.5), (29.5, 4.5)),
        ((29.5, 4.5), (9.5, 34.5)),
    )


@pytest.mark.parametrize("angle", [0.0, 30.0, 90.0, 135.0])
def test_ellipse_axes_with_anisotropic_pixels(angle: float) -> None:
    spacing = (0.5, 0.8)
    mask = ellipse((240, 160), spacing, a_mm=30.0, b_mm=12.0, angle_deg=angle)[None]
    recist = measure(mask, (3.0, *spacing)).recist
    # A pixelated ellipse is within about one pixel of the true axes (pixels count by their corners).
    assert recist.long_axis_mm == pytest.approx(60.0, abs=1.2)
    assert recist.short_axis_mm == pytest.approx(24.0, abs=1.2)


def test_the_slice_with_the_longest_diameter_is_chosen() -> None:
    mask = np.zeros((5, 64, 64), bool)
    mask[1] = ellipse((64, 64), (1.0, 1.0), 10, 10)
    mask[3] = ellipse((64, 64), (1.0, 1.0), 20, 6)  # longer but thinner
    mask[2] = ellipse((64, 64), (1.0, 1.0), 15, 15)
    recist = measure(mask, (1.0, 1.0, 1.0)).recist
    assert recist.slice == 3
    assert recist.short_axis_mm == pytest.approx(12.0, abs=1.5)


def test_short_axis_stays_inside_a_concave_object() -> None:
    mask = np.zeros((1, 100, 100), bool)
    mask[0, 10:90, 10:20] = True  # an L: the long axis runs corner to corner
    mask[0, 80:90, 10:90] = True
    recist = measure(mask, (1.0, 1.0, 1.0)).recist
    assert recist.long_axis_mm == pytest.approx(80 * math.sqrt(2), abs=1e-3)  # reported to 0.001 mm
    # Across the L perpendicular to the diagonal, the longest segment inside is the corner's width, ~10*sqrt(2).
    assert recist.short_axis_mm == pytest.approx(10 * math.sqrt(2), abs=1.0)
    (r0, c0), (r1, c1) = recist.short_axis_endpoints
    for t in np.linspace(0.05, 0.95, 19):  # every point of the reported segment is inside the mask
        assert mask[0, int(round(r0 + t * (r1 - r0))), int(round(c0 + t * (c1 - c0)))]


def test_a_single_pixel_measures_as_the_rectangle_it_covers() -> None:
    mask = np.zeros((1, 5, 5), bool)
    mask[0, 2, 2] = True
    result = measure(mask, (1.0, 0.6, 0.8))
    assert result.recist.long_axis_mm == pytest.approx(1.0)  # the 0.6 x 0.8 mm pixel's diagonal
    # Perpendicular to that diagonal, the longest chord of the rectangle: 2 * min(0.4 / 0.6, 0.3 / 0.8) = 0.75 mm.
    assert result.recist.short_axis_mm == pytest.approx(0.75, abs=0.08)


def test_an_empty_mask_has_no_recist() -> None:
    result = measure(np.zeros((3, 8, 8), bool), (1.0, 1.0, 1.0), obj_id=4)
    assert (result.voxels, result.volume_ml, result.slices, result.recist) == (0, 0.0, None, None)
    assert result.label == "object 4"


def test_bad_arguments() -> None:
    with pytest.raises(InvalidInput, match=r"a mask must be \[slices, rows, columns\], got shape \(8, 8\)"):
        measure(np.zeros((8, 8), bool), (1, 1, 1))
    with pytest.raises(InvalidInput, match=r"spacing must be positive, got \[1, 0, 1\]"):
        measure(np.zeros((1, 8, 8), bool), [1, 0, 1])


def test_json_document(tmp_path: Path) -> None:
    masks = {1: np.zeros((2, 8, 8), bool), 3: np.ones((2, 8, 8), bool)}
    measured = measure_all(masks, (2.0, 1.0, 1.0), {3: "tumour"})
    path = write_measurements(tmp_path / "m.json", measured, source="dicom", model_version="v")
    report = json.loads(path.read_text())
    assert report["source"] == "dicom" and report["model_version"] == "v"
    assert [o["obj_id"] for o in report["objects"]] == [1, 3]
    assert report["objects"][1]["label"] == "tumour"
    assert report["objects"][1]["volume_ml"] == pytest.approx(0.256)
    assert report["objects"][1]["recist"]["long_axis_mm"] == pytest.approx(math.hypot(8, 8), abs=1e-3)
