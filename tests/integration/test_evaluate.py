"""medsam2 evaluate: exact metrics, the paper's prompts, dataset layouts, outputs, bad input, and the --server path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medsam2.cli.main import main
from medsam2.datasets.synthetic import SyntheticOptions, write_synthetic_dataset
from medsam2.datasets.training_npz import TrainingCase, read_training_case, write_training_case
from medsam2.engine.prompts import Box
from medsam2.errors import InvalidInput
from medsam2.evaluation.cases import find_cases
from medsam2.evaluation.metrics import dice, nsd, surface
from medsam2.evaluation.prompts import ground_truth_prompt, jitter_box
from medsam2.evaluation.runner import EvaluationOptions, evaluate
from medsam2.testing.truth_predictor import TruthPredictor

TINY = SyntheticOptions(volumes=2, videos=1, slices=8, frames=8, size=32, seed=3)


def _square(rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros((1, 4, 4), bool)
    mask[0, rows, cols] = True
    return mask


def test_metrics_on_a_hand_computed_case() -> None:
    truth = _square(slice(1, 3), slice(1, 3))  # 4 voxels
    pred = _square(slice(1, 3), slice(1, 4))  # 6 voxels, one extra column
    assert dice(pred, truth) == pytest.approx(2 * 4 / 10)
    # One slice: every voxel touches the volume's border, so every voxel is surface. The two extra
    # predicted voxels are 1 voxel (x spacing 2 -> 2 mm) from the truth; the rest are at distance 0.
    assert nsd(pred, truth, (1.0, 1.0, 2.0), tolerance_mm=1.5) == pytest.approx((4 + 4) / (6 + 4))
    assert nsd(pred, truth, (1.0, 1.0, 2.0), tolerance_mm=2.0) == pytest.approx(1.0)
    assert nsd(pred, truth, (1.0, 1.0, 1.0), tolerance_mm=1.0) == pytest.approx(1.0)
    assert nsd(np.zeros_like(truth), truth, (1, 1, 1), 5.0) == 0.0
    assert dice(np.zeros_like(truth), truth) == 0.0


def test_surface_excludes_the_inside_of_a_cube() -> None:
    cube = np.zeros((5, 5, 5), bool)
    cube[1:4, 1:4, 1:4] = True
    assert int(surface(cube).sum()) == 26  # 27 voxels minus the centre
    shifted = np.roll(cube, 1, axis=2)
    # Of each surface, 10 voxels are 1 voxel from the other surface: the 9 of the face that does not overlap,
    # and the one whose neighbour along x is the other cube's (non-surface) centre.
    assert nsd(shifted, cube, (1, 1, 1), tolerance_mm=0.5) == pytest.approx((26 - 10 + 26 - 10) / 52)
    assert nsd(shifted, cube, (1, 1, 1), tolerance_mm=1.0) == 1.0


def test_prompt_is_the_truth_box_on_the_middle_slice_and_jitter_is_seeded() -> None:
    mask = np.zeros((10, 20, 20), bool)
    mask[2:7, 5:9, 3:12] = True  # slices 2..6 -> middle 4
    prompt = ground_truth_prompt(mask, video=False)
    assert prompt.frame == 4 and prompt.extent == (2, 6)
    assert prompt.box == Box(3, 5, 11, 8)
    assert ground_truth_prompt(mask, video=True).frame == 2
    a = jitter_box(prompt.box, 3, np.random.default_rng(7), 20, 20)
    b = jitter_box(prompt.box, 3, np.random.default_rng(7), 20, 20)
    assert a == b and a != prompt.box
    assert all(abs(u - v) <= 3 for u, v in zip((a.x0, a.y0, a.x1, a.y1), (3, 5, 11, 8), strict=False))


def test_truth_as_prediction_scores_one(tmp_path: Path) -> None:
    write_synthetic_dataset(tmp_path, SyntheticOptions(volumes=3, videos=1, slices=10, size=48, seed=1))
    rows = evaluate(find_cases(tmp_path), TruthPredictor(), EvaluationOptions(jitter_px=5, seed=2))
    assert len(rows) >= 4 and {r.modality for r in rows} == {"CT", "US"}
    assert all(r.dsc == 1.0 and r.nsd == 1.0 for r in rows)


def _nifti_pairs(root: Path) -> None:
    import nibabel as nib

    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    image = rng.normal(40, 20, (12, 16, 6)).astype(np.float32)  # NIfTI order x, y, z
    labels = np.zeros(image.shape, np.uint8)
    labels[3:7, 4:9, 1:4] = 1
    affine = np.diag([0.7, 0.7, 3.0, 1.0])
    nib.save(nib.Nifti1Image(image, affine), str(root / "imagesTr" / "case1_0000.nii.gz"))
    nib.save(nib.Nifti1Image(labels, affine), str(root / "labelsTr" / "case1.nii.gz"))


def test_nifti_pairs_are_read_with_their_spacing(tmp_path: Path) -> None:
    _nifti_pairs(tmp_path)
    (source,) = find_cases(tmp_path)
    case = source.load()
    assert source.name == "case1" and case.imgs.dtype == np.uint8
    assert case.gts.shape == (6, 16, 12) and case.spacing == pytest.approx((3.0, 0.7, 0.7))
    assert int(case.gts.sum()) == 4 * 5 * 3
    rows = evaluate([source], TruthPredictor())
    assert [(r.dsc, r.nsd) for r in rows] == [(1.0, 1.0)]


def test_dicom_series_with_a_seg(tmp_path: Path) -> None:
    from medsam2.io.outputs import write_result
    from medsam2.io.volumes import read_volume
    from medsam2.testing.synthetic_ct import write_synthetic_ct

    series = write_synthetic_ct(
        tmp_path / "case_a" / "ct",
        slices=10,
        size=48,
        pixel_spacing=(4.0, 4.0),
        slice_spacing=5.0,
        lesion_radius_mm=20.0,
    )
    volume = read_volume(series.folder)
    lesion = np.zeros(volume.voxels.shape, bool)
    k, r, c = series.lesion_voxel()
    lesion[k - 1 : k + 2, r - 2 : r + 3, c - 2 : c + 3] = True
    write_result(tmp_path / "case_a" / "seg.dcm", {1: lesion}, volume, model_version="test")
    (source,) = find_cases(tmp_path)
    case = source.load()
    assert source.name == "case_a" and case.modality == "CT"
    np.testing.assert_array_equal(case.gts == 1, lesion)
    assert [(r.dsc, r.nsd) for r in evaluate([source], TruthPredictor())] == [(1.0, 1.0)]


def _case(tmp_path: Path, imgs: np.ndarray, gts: np.ndarray, name: str = "bad") -> Path:
    folder = tmp_path / "data"
    folder.mkdir(exist_ok=True)
    np.savez(folder / f"{name}.npz", imgs=imgs, gts=gts, spacing=np.ones(3))
    return folder


@pytest.mark.parametrize(
    "gts_shape, fill, message",
    [
        ((8, 32, 31), 1, r"label shape \(8, 32, 31\) does not match image shape \(8, 32, 32\)"),
        ((8, 32, 32), 0, "label volume is empty"),
    ],
)
def test_bad_datasets_fail_before_the_model(tmp_path: Path, capsys, gts_shape, fill, message) -> None:
    gts = np.zeros(gts_shape, np.uint8)
    gts[2:4, 5:9, 5:9] = fill
    folder = _case(tmp_path, np.zeros((8, 32, 32), np.uint8), gts)
    # A checkpoint that does not exist proves the data check comes first.
    code = main(["evaluate", str(folder), "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "o")])
    assert code == 2
    assert message.replace("\\", "") in capsys.readouterr().err.replace("\\", "")


def test_unwritable_output_fails_first(tmp_path: Path, capsys) -> None:
    write_synthetic_dataset(tmp_path / "data", TINY)
    (tmp_path / "a_file").write_text("")  # a folder below a file cannot be made, even by root
    code = main(
        [
            "evaluate",
            str(tmp_path / "data"),
            "--checkpoint",
            str(tmp_path / "none.pt"),
            "--out",
            str(tmp_path / "a_file" / "out"),
        ]
    )
    assert code == 5
    assert "cannot write the evaluation output folder" in capsys.readouterr().err


def test_training_npz_round_trip_keeps_provenance(tmp_path: Path) -> None:
    gts = np.zeros((4, 8, 8), np.uint8)
    gts[1:3, 2:5, 2:5] = 2
    case = TrainingCase(
        "c",
        np.full((4, 8, 8), 7, np.uint8),
        gts,
        (2.0, 0.5, 0.5),
        "MR",
        False,
        {"model_version": 3, "checkpoint_sha256": "ab" * 32},
    )
    back = read_training_case(write_training_case(tmp_path, case))
    assert back.provenance == case.provenance and back.modality == "MR" and back.spacing == (2.0, 0.5, 0.5)
    np.testing.assert_array_equal(back.gts, gts)
    with pytest.raises(InvalidInput, match="label volume is empty"):
        write_training_case(tmp_path, TrainingCase("e", case.imgs, np.zeros_like(gts)))


def test_evaluate_locally_and_through_the_service_agree(tmp_path: Path, graphs, capsys) -> None:
    from medsam2.backends.onnxruntime_backend import OnnxRuntimeBackend
    from medsam2.server.app import start_server
    from medsam2.server.config import ServerSettings

    write_synthetic_dataset(tmp_path / "data", SyntheticOptions(volumes=1, videos=0, slices=8, size=32, seed=5))
    assert (
        main(
            [
                "evaluate",
                str(tmp_path / "data"),
                "--graphs",
                str(graphs["present"]),
                "--out",
                str(tmp_path / "local"),
                "--json",
                "--no-progress",
                "--jitter",
                "2",
                "--seed",
                "1",
            ]
        )
        == 0
    )
    local = json.loads(capsys.readouterr().out)
    assert {"case", "object", "dsc", "nsd"} <= set(local["cases"][0])
    assert set(local["summary"]["by_modality"]) == {"CT"} and local["summary"]["overall"]["dsc"]["n"] >= 1
    for name in ("per_object.csv", "summary.json", "boxplots.png"):
        assert (tmp_path / "local" / name).stat().st_size > 0
    settings = ServerSettings(port=0, metrics_port=0, model_repository=graphs["present"])
    running = start_server(settings, OnnxRuntimeBackend(graphs["present"], threads=2))
    try:
        assert (
            main(
                [
                    "evaluate",
                    str(tmp_path / "data"),
                    "--server",
                    f"127.0.0.1:{running.port}",
                    "--out",
                    str(tmp_path / "remote"),
                    "--json",
                    "--no-progress",
                    "--jitter",
                    "2",
                    "--seed",
                    "1",
                ]
            )
            == 0
        )
        remote = json.loads(capsys.readouterr().out)
        # SaveAnnotation on the client: the image as the service saw it and the final mask, as training data.
        first = remote["cases"][0]
        assert (
            main(
                [
                    "client",
                    str(tmp_path / "data" / "ct_000.npz"),
                    "--server",
                    f"127.0.0.1:{running.port}",
                    "--box",
                    first["box"],
                    "--slice",
                    str(first["key_slice"]),
                    "--out",
                    str(tmp_path / "r.npz"),
                    "--no-progress",
                    "--save-annotation",
                    str(tmp_path / "annotations"),
                ]
            )
            == 0
        )
    finally:
        running.stop(1)
    (saved,) = sorted((tmp_path / "annotations").glob("*.npz"))
    case = read_training_case(saved)
    np.testing.assert_array_equal(case.imgs, read_training_case(tmp_path / "data" / "ct_000.npz").imgs)
    np.testing.assert_array_equal(case.gts > 0, np.load(tmp_path / "r.npz")["segs"] > 0)
    assert case.provenance["server"] == f"127.0.0.1:{running.port}" and "saved_at" in case.provenance
    assert [(c["dsc"], c["nsd"], c["box"]) for c in remote["cases"]] == [
        (c["dsc"], c["nsd"], c["box"]) for c in local["cases"]
    ]
    assert remote["summary"]["model"] == {"server": f"127.0.0.1:{running.port}"}
