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
    assert _run(tmp_path, checkpoints["present"], good, out, "--lr-scale", "0") == 2
    assert "--lr-scale must be positive, got 0.0" in capsys.readouterr().err
    assert not out.exists()


def test_every_output_and_the_iou_head_are_supervised_as_sam2_does() -> None:
    """sam2's MultiStepMultiMasksAndIous: focal+dice through the best output only, IoU (L1) on all, BCE object score."""
    import torch.nn.functional as F

    from medsam2_export.finetune.losses import dice_loss, focal_loss, frame_loss

    target = torch.zeros(1, 1, 8, 8)
    target[..., 2:6, 2:6] = 1
    right = (target * 2 - 1) * 8  # +8 inside the object, -8 outside
    logits = torch.cat([-right, right, torch.full_like(target, -8.0)], 1).requires_grad_()
    ious = torch.tensor([[0.5, 0.2, 0.9]], requires_grad=True)
    score = torch.tensor([[3.0]], requires_grad=True)
    loss = frame_loss(logits, ious, score, target)
    assert loss.focal == pytest.approx(float(focal_loss(right, target)[0, 0]))
    assert loss.dice == pytest.approx(float(dice_loss(right, target)[0, 0]))
    assert loss.iou == pytest.approx((abs(0.5 - 0) + abs(0.2 - 1) + abs(0.9 - 0)) / 3)  # true IoUs 0, 1, 0
    assert loss.object_score == pytest.approx(float(F.softplus(torch.tensor(-3.0))))
    assert float(loss.total.detach()) == pytest.approx(20 * loss.focal + loss.dice + loss.iou + loss.object_score)
    loss.total.backward()
    assert logits.grad[0, 1].abs().sum() > 0 and logits.grad[0, [0, 2]].abs().sum() == 0
    assert bool(torch.all(ious.grad != 0)) and float(score.grad) != 0
    # An absent object teaches only the object score.
    absent = frame_loss(logits.detach(), ious.detach(), score.detach(), torch.zeros_like(target))
    assert absent.focal == absent.dice == absent.iou == 0
    assert float(absent.total) == pytest.approx(float(F.softplus(torch.tensor(3.0))))


def test_tracked_frames_train_the_iou_and_object_score_heads(checkpoints, tmp_path: Path) -> None:
    from medsam2_export.finetune.data import load_dataset, sample_clip
    from medsam2_export.finetune.losses import FrameLoss
    from medsam2_export.finetune.trainer import FeatureCache, FinetuneOptions, _parameter_groups, clip_loss
    from medsam2_export.model import load_model

    write_synthetic_dataset(tmp_path, TINY)
    cases = load_dataset(tmp_path, clip_length=2)
    model = load_model(checkpoints["present"]).train()
    _parameter_groups(model, FinetuneOptions(freeze_encoder=True))
    rng = np.random.default_rng(1)
    clip = sample_clip(cases, rng, clip_length=2, jitter_px=0, augment=False)
    while not clip.masks[1].any():  # a tracked frame that shows the object: its three outputs are all scored
        clip = sample_clip(cases, rng, clip_length=2, jitter_px=0, augment=False)
    fpn, pos = FeatureCache(model, cases).features(clip.case, clip.frames)
    terms: list[FrameLoss] = []
    clip_loss(model, clip, fpn, pos, detach_memory_masks=True, terms=terms).backward()
    assert len(terms) == 2 and terms[1].iou > 0
    grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "iou_prediction_head" in n)
    assert grads["sam_mask_decoder.pred_obj_score_head.layers.2.bias"].abs().sum() > 0
    assert all(p.grad is None for n, p in model.named_parameters() if n.startswith("image_encoder."))


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
