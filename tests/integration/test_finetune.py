"""medsam2 finetune: bad input fails before training, a short CPU run lowers the loss, versions export side by side."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from medsam2.cli.main import main  # noqa: E402
from medsam2.datasets.synthetic import SyntheticOptions, write_synthetic_dataset  # noqa: E402
from medsam2.models.provenance import list_versions, read_provenance  # noqa: E402

TINY = SyntheticOptions(volumes=1, videos=0, slices=8, size=32, seed=4)


def _tree_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        digest.update(str(path.relative_to(folder)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _bad_case(folder: Path, gts: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "bad.npz", imgs=np.zeros((8, 32, 32), np.uint8), gts=gts, spacing=np.ones(3))
    return folder


def _run(tmp_path: Path, checkpoint: Path, dataset: Path, out: Path, *extra: str) -> int:
    return main(
        [
            "finetune",
            "--checkpoint",
            str(checkpoint),
            "--dataset",
            str(dataset),
            "--out",
            str(out),
            "--steps",
            "1",
            "--freeze-encoder",
            "--no-progress",
            *extra,
        ]
    )


@pytest.fixture
def foreign_checkpoint(checkpoints, tmp_path: Path) -> Path:
    """The test checkpoint with one tensor of another model size, as a checkpoint of another config has."""
    blob = torch.load(checkpoints["present"], map_location="cpu", weights_only=True)
    key = "sam_mask_decoder.iou_prediction_head.layers.0.weight"
    blob["model"][key] = torch.zeros(128, 128)
    path = tmp_path / "foreign.pt"
    torch.save({"model": blob["model"]}, path)
    return path


def test_bad_input_fails_before_training(checkpoints, foreign_checkpoint, tmp_path: Path, capsys) -> None:
    good = tmp_path / "good"
    write_synthetic_dataset(good, TINY)
    out = tmp_path / "out" / "new.pt"
    cases = [
        (
            _bad_case(tmp_path / "shape", np.ones((8, 32, 30), np.uint8)),
            checkpoints["present"],
            out,
            2,
            r"label shape (8, 32, 30) does not match image shape (8, 32, 32)",
        ),
        (
            _bad_case(tmp_path / "empty", np.zeros((8, 32, 32), np.uint8)),
            checkpoints["present"],
            out,
            2,
            "the label volume is empty",
        ),
        (good, foreign_checkpoint, out, 4, "does not match the config"),
        (good, checkpoints["present"], tmp_path / "a_file" / "new.pt", 5, "cannot write the output checkpoint"),
        (good, checkpoints["present"], good / "new.pt", 5, "inside the dataset"),
    ]
    (tmp_path / "a_file").write_text("")
    before = _tree_hash(good)
    for dataset, checkpoint, target, code, message in cases:
        assert _run(tmp_path, checkpoint, dataset, target) == code, message
        assert message in capsys.readouterr().err
        assert not target.exists() and not Path(str(target) + ".train-state").exists()
    assert _tree_hash(good) == before


def _fixed_clip_loss(checkpoint: Path, dataset: Path) -> float:
    from medsam2_export.finetune.data import load_dataset, sample_clip
    from medsam2_export.finetune.trainer import FeatureCache, clip_loss
    from medsam2_export.model import load_model

    cases = load_dataset(dataset, clip_length=2)
    model = load_model(checkpoint)  # eval mode: no dropout, so the loss is a function of the weights only
    clip = sample_clip(cases, np.random.default_rng(123), clip_length=2, jitter_px=0, augment=False)
    with torch.no_grad():
        fpn, pos = FeatureCache(model, cases).features(clip.case, clip.frames)
        return float(clip_loss(model, clip, fpn, pos))


def test_short_cpu_run_lowers_the_loss_and_records_provenance(checkpoints, tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    write_synthetic_dataset(data, TINY)
    before = _tree_hash(data)
    out = tmp_path / "new.pt"
    assert (
        main(
            [
                "finetune",
                "--checkpoint",
                str(checkpoints["present"]),
                "--dataset",
                str(data),
                "--out",
                str(out),
                "--steps",
                "3",
                "--clip-length",
                "2",
                "--freeze-encoder",
                "--jitter",
                "0",
                "--seed",
                "5",
                "--save-every",
                "2",
                "--no-progress",
                "--json",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert _tree_hash(data) == before  # never writes into the dataset
    assert _fixed_clip_loss(out, data) < _fixed_clip_loss(checkpoints["present"], data)
    blob = torch.load(out, map_location="cpu", weights_only=True)
    provenance = blob["provenance"]
    assert provenance["steps"] == 3 and provenance["seed"] == 5
    assert provenance["base_checkpoint_sha256"] == hashlib.sha256(checkpoints["present"].read_bytes()).hexdigest()
    assert len(provenance["dataset_sha256"]) == 64
    # Resumable: one more step continues from the saved state (step 3), not from the start.
    assert (
        main(
            [
                "finetune",
                "--checkpoint",
                str(checkpoints["present"]),
                "--dataset",
                str(data),
                "--out",
                str(out),
                "--steps",
                "4",
                "--clip-length",
                "2",
                "--freeze-encoder",
                "--jitter",
                "0",
                "--seed",
                "5",
                "--resume",
                "--no-progress",
                "--json",
            ]
        )
        == 0
    )
    import json

    resumed = json.loads(capsys.readouterr().out)
    assert resumed["steps"] == 4 and len(resumed["losses"]) == 4


def test_finetuned_checkpoint_exports_as_version_2_next_to_1(checkpoints, graphs, tmp_path: Path) -> None:
    from medsam2.graphs import GRAPHS
    from medsam2_export import model_repository
    from medsam2_export.finetune.trainer import FinetuneOptions, finetune

    repo = tmp_path / "repo"
    model_repository.write_model_repository(
        repo, "onnxruntime", {s: graphs["present"] / f"{s.value}.onnx" for s in GRAPHS}
    )
    data = tmp_path / "data"
    write_synthetic_dataset(data, TINY)
    tuned = finetune(
        checkpoints["present"],
        data,
        tmp_path / "tuned.pt",
        FinetuneOptions(steps=1, clip_length=2, freeze_encoder=True),
    ).out
    assert main(["export", "--checkpoint", str(tuned), "--out", str(repo), "--version", "2"]) == 0
    assert list_versions(repo) == [1, 2]
    for graph in ("image_encoder", "memory_attention", "track_step"):
        assert (repo / graph / "1").is_dir() and (repo / graph / "2").is_dir()
    record = read_provenance(repo)
    assert record.version == 2 and record.steps == 1
    assert record.base_checkpoint_sha256 == hashlib.sha256(checkpoints["present"].read_bytes()).hexdigest()
    assert record.checkpoint_sha256 == hashlib.sha256(tuned.read_bytes()).hexdigest()
    # A served version is never overwritten.
    assert main(["export", "--checkpoint", str(tuned), "--out", str(repo), "--version", "2"]) == 5
