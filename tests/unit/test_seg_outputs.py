"""Results by file name: label maps, quick-look PNG/GIF overlays, measurements beside every output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medsam2.errors import InvalidInput
from medsam2.io.outputs import check_output, label_map, measurements_path, write_result
from medsam2.io.overlays import blend
from medsam2.io.volumes import Volume, read_volume


@pytest.fixture()
def volume() -> Volume:
    voxels = np.tile(np.linspace(0, 255, 32, dtype=np.uint8), (6, 32, 1))
    return Volume(voxels, (2.0, 0.5, 0.5), "npz")


def masks_for(shape: tuple[int, int, int]) -> dict[int, np.ndarray]:
    a = np.zeros(shape, bool)
    a[1:4, 4:12, 4:12] = True
    b = np.zeros(shape, bool)
    b[2:5, 14:28, 10:20] = True
    return {1: a, 2: b}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("x.dcm", "x.measurements.json"),
        ("x.nii.gz", "x.measurements.json"),
        ("a.b.nii", "a.b.measurements.json"),
        ("x.npz", "x.measurements.json"),
        ("x.gif", "x.measurements.json"),
    ],
)
def test_measurements_go_beside_the_output(name: str, expected: str) -> None:
    assert measurements_path(Path("/out") / name) == Path("/out") / expected


def test_output_names_are_checked_before_any_work(volume: Volume) -> None:
    with pytest.raises(InvalidInput, match=r"--out x\.tiff: the extension must be one of \.dcm, \.nii"):
        check_output(Path("x.tiff"))
    with pytest.raises(InvalidInput, match="a DICOM SEG needs a DICOM source, but the input is npz"):
        check_output(Path("x.dcm"), volume)


def test_label_map_npz_round_trip(volume: Volume, tmp_path: Path) -> None:
    masks = masks_for(volume.voxels.shape)
    written = write_result(tmp_path / "labels.npz", masks, volume, model_version="v")
    with np.load(written[0]) as npz:
        labels = npz["segs"]
        np.testing.assert_allclose(npz["spacing"], volume.spacing)
    np.testing.assert_array_equal(labels, label_map(masks))
    assert set(np.unique(labels)) == {0, 1, 2}
    report = json.loads(written[1].read_text())
    assert [o["voxels"] for o in report["objects"]] == [int(masks[1].sum()), int(masks[2].sum())]
    # The label map travels inside the npz and beside it: each value names its object.
    assert written[2] == tmp_path / "labels.labels.json"
    beside = json.loads(written[2].read_text())
    with np.load(written[0], allow_pickle=False) as npz:
        assert json.loads(str(npz["labels"])) == beside
    assert [(e["value"], e["object_id"]) for e in beside["labels"]] == [(1, 1), (2, 2)]


def test_label_map_refuses_ids_it_cannot_store() -> None:
    with pytest.raises(InvalidInput, match=r"object ids must be 1\.\.65535 for a label map, got \[0\]"):
        label_map({0: np.zeros((1, 2, 2), bool)})


def test_png_overlay_shows_each_object_in_its_colour(volume: Volume, tmp_path: Path) -> None:
    masks = masks_for(volume.voxels.shape)
    path = write_result(tmp_path / "look.png", masks, volume, model_version="v", display=volume.voxels)[0]
    picture = np.asarray(Image.open(path).convert("RGB"))
    assert picture.shape == (32, 32, 3)
    # The default palette: object 1 red-ish, object 2 green-ish; outlines are drawn opaque.
    assert tuple(picture[4, 4]) == (230, 25, 75)
    assert tuple(picture[14, 10]) == (60, 180, 75)
    assert picture[20, 30, 0] == picture[20, 30, 1] == picture[20, 30, 2]  # untouched background stays grey


def test_gif_overlay_runs_through_the_covered_slices(volume: Volume, tmp_path: Path) -> None:
    masks = masks_for(volume.voxels.shape)
    path = write_result(tmp_path / "look.gif", masks, volume, model_version="v", display=volume.voxels)[0]
    with Image.open(path) as gif:
        total_ms = 0
        for index in range(gif.n_frames):
            gif.seek(index)
            total_ms += gif.info["duration"]
    # Slices 1..4 are covered (Pillow merges identical neighbouring frames, adding up their durations).
    assert total_ms == 4 * 120


def test_overlay_needs_the_slices(volume: Volume, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="an overlay needs the uint8 slices"):
        write_result(tmp_path / "x.png", masks_for(volume.voxels.shape), volume, model_version="v")
    with pytest.raises(InvalidInput, match=r"an overlay needs a grey uint8 slice, got float64"):
        blend(np.zeros((4, 4)), [], [])


def test_nifti_output_of_an_npz_volume_uses_its_spacing(volume: Volume, tmp_path: Path) -> None:
    out = write_result(tmp_path / "m.nii.gz", masks_for(volume.voxels.shape), volume, model_version="v")[0]
    back = read_volume(out)
    assert back.spacing == pytest.approx(volume.spacing)
