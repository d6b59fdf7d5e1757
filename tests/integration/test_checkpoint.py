"""Model building and strict checkpoint loading, with every bad-input case named."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medsam2.errors import CheckpointError, ConfigError, OutputNotWritable
from medsam2_export.model import (
    DEFAULT_CONFIG,
    NUM_STATE_KEYS,
    OBJECT_SCORE_BIAS_KEY,
    build_model,
    load_checkpoint,
    load_config,
    load_model,
    read_state_dict,
    write_random_checkpoint,
)


def test_model_matches_published_size() -> None:
    model = build_model()
    assert sum(p.numel() for p in model.parameters()) == 38_962_498
    assert len(model.state_dict()) == NUM_STATE_KEYS
    assert model.image_size == 512
    assert model.sam_mask_decoder.dynamic_multimask_via_stability
    assert model.binarize_mask_from_pts_for_mem_enc


@pytest.mark.parametrize(("objects", "bias"), [("present", 10.0), ("absent", -10.0)])
def test_random_checkpoint_format_and_object_bias(tmp_path: Path, objects: str, bias: float) -> None:
    path = write_random_checkpoint(5, tmp_path / "ck.pt", objects).path
    blob = torch.load(path, weights_only=True)
    assert set(blob) == {"model", "untrained"}
    assert len(blob["model"]) == NUM_STATE_KEYS
    assert torch.all(blob["model"][OBJECT_SCORE_BIAS_KEY] == bias)
    load_model(path)  # strict


def test_random_checkpoint_is_seeded(tmp_path: Path) -> None:
    a = read_state_dict(write_random_checkpoint(3, tmp_path / "a.pt").path)
    b = read_state_dict(write_random_checkpoint(3, tmp_path / "b.pt").path)
    c = read_state_dict(write_random_checkpoint(4, tmp_path / "c.pt").path)
    key = "image_encoder.trunk.patch_embed.proj.weight"
    assert torch.equal(a[key], b[key])
    assert not torch.equal(a[key], c[key])


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    return read_state_dict(write_random_checkpoint(1, tmp_path_factory.mktemp("ck") / "ck.pt").path)


def test_missing_keys_are_named(tmp_path: Path, state: dict) -> None:
    broken = dict(state)
    del broken["no_mem_embed"]
    torch.save({"model": broken}, tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match=r"1 missing keys \[no_mem_embed\]"):
        load_checkpoint(build_model(), tmp_path / "missing.pt")


def test_unexpected_keys_are_named(tmp_path: Path, state: dict) -> None:
    torch.save({"model": {**state, "extra.weight": torch.zeros(1)}}, tmp_path / "extra.pt")
    with pytest.raises(CheckpointError, match=r"1 unexpected keys \[extra.weight\]"):
        load_checkpoint(build_model(), tmp_path / "extra.pt")


def test_wrong_shapes_name_the_tensor(tmp_path: Path, state: dict) -> None:
    torch.save({"model": {**state, "no_mem_embed": torch.zeros(1, 1, 128)}}, tmp_path / "shape.pt")
    with pytest.raises(CheckpointError, match=r"no_mem_embed is \(1, 1, 128\), expected \(1, 1, 256\)"):
        load_checkpoint(build_model(), tmp_path / "shape.pt")


def test_truncated_file(tmp_path: Path, checkpoints: dict[str, Path]) -> None:
    data = checkpoints["present"].read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        read_state_dict(tmp_path / "cut.pt")


def test_garbage_file(tmp_path: Path) -> None:
    (tmp_path / "junk.pt").write_bytes(b"this is not a checkpoint\n" * 10)
    with pytest.raises(CheckpointError, match="junk.pt"):
        read_state_dict(tmp_path / "junk.pt")


def test_not_published_format(tmp_path: Path) -> None:
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not in the published format"):
        read_state_dict(tmp_path / "other.pt")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        read_state_dict(tmp_path / "nope.pt")


def test_wrong_config_is_refused(tmp_path: Path) -> None:
    text = DEFAULT_CONFIG.read_text().replace("image_size: 512", "image_size: 1024")
    (tmp_path / "sam2.1_hiera_t.yaml").write_text(text)
    with pytest.raises(ConfigError, match="image_size is 1024, MedSAM2 needs 512"):
        load_config(tmp_path / "sam2.1_hiera_t.yaml")
    rope = DEFAULT_CONFIG.read_text().replace("feat_sizes: [32, 32]", "feat_sizes: [64, 64]")
    (tmp_path / "rope.yaml").write_text(rope)
    with pytest.raises(ConfigError, match="RoPE feat_sizes"):
        load_config(tmp_path / "rope.yaml")
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_unwritable_output(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputNotWritable, match="file"):
        write_random_checkpoint(1, blocker / "sub" / "ck.pt")
