"""Build MedSAM2 with Meta's sam2 1.1.0 modules and load checkpoints strictly.

The model is sam2's ``SAM2VideoPredictor`` built from our copy of MedSAM2's
512-pixel config, with the postprocessing MedSAM2 uses.  Hole filling needs
sam2's CUDA extension, so it is off by default here and done by our own code.
"""

from __future__ import annotations

import logging
import zipfile
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import torch

from medsam2.errors import CheckpointError, ConfigError, OutputNotWritable
from medsam2.io.atomic import write_atomic

log = logging.getLogger(__name__)

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "sam2.1_hiera_t512.yaml"
"""The MedSAM2 model config shipped with this package."""

# What MedSAM2 turns on through sam2's `apply_postprocessing=True`.
POSTPROCESSING: dict[str, Any] = {
    "sam_mask_decoder_extra_args": {
        "dynamic_multimask_via_stability": True,
        "dynamic_multimask_stability_delta": 0.05,
        "dynamic_multimask_stability_thresh": 0.98,
    },
    "binarize_mask_from_pts_for_mem_enc": True,
}

OBJECT_SCORE_BIAS_KEY = "sam_mask_decoder.pred_obj_score_head.layers.2.bias"
EXPECTED_IMAGE_SIZE = 512
EXPECTED_ROPE_GRID = [32, 32]
NUM_STATE_KEYS = 471


class ObjectBias(str, Enum):
    """How a random checkpoint's object-score head is biased."""

    PRESENT = "present"
    ABSENT = "absent"
    RANDOM = "random"


OBJECT_BIAS_VALUE = {ObjectBias.PRESENT: 10.0, ObjectBias.ABSENT: -10.0}


def load_config(path: Path = DEFAULT_CONFIG) -> Any:
    """Read a model config and check that it is MedSAM2's 512-pixel SAM2.1-tiny."""
    from omegaconf import OmegaConf

    try:
        cfg = OmegaConf.load(path)
    except FileNotFoundError as exc:
        raise ConfigError(f"model config not found: {path}") from exc
    except Exception as exc:  # yaml and omegaconf raise many types
        raise ConfigError(f"model config {path} is not valid YAML: {exc}") from exc
    _check_config(cfg, path)
    return cfg


def _check_config(cfg: Any, path: Path) -> None:
    model = cfg.get("model") if hasattr(cfg, "get") else None
    if model is None:
        raise ConfigError(f"model config {path} has no 'model' section")
    size = model.get("image_size")
    if size != EXPECTED_IMAGE_SIZE:
        raise ConfigError(f"model config {path}: image_size is {size}, MedSAM2 needs {EXPECTED_IMAGE_SIZE}")
    try:
        layer = model.memory_attention.layer
        grids = [list(layer.self_attention.feat_sizes), list(layer.cross_attention.feat_sizes)]
    except Exception as exc:
        raise ConfigError(f"model config {path}: memory attention section is missing or malformed") from exc
    if any(g != EXPECTED_ROPE_GRID for g in grids):
        raise ConfigError(f"model config {path}: RoPE feat_sizes are {grids}, MedSAM2 needs {EXPECTED_ROPE_GRID}")


def build_model(config_path: Path = DEFAULT_CONFIG, fill_hole_area: int = 0) -> torch.nn.Module:
    """Instantiate an untrained ``SAM2VideoPredictor`` for MedSAM2 on the CPU, in eval mode."""
    import hydra.utils
    from omegaconf import OmegaConf

    cfg = load_config(config_path)
    cfg.model._target_ = "sam2.sam2_video_predictor.SAM2VideoPredictor"
    merged = OmegaConf.merge(cfg.model, {**POSTPROCESSING, "fill_hole_area": fill_hole_area})
    model = hydra.utils.instantiate(merged, _recursive_=True)
    return model.eval()


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read the ``model`` state dict of a checkpoint in the published format."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated: {exc}") from exc
    except Exception as exc:  # unpickling of a foreign file raises arbitrary types
        raise CheckpointError(f"checkpoint {path} cannot be read: {type(exc).__name__}: {exc}") from exc
    if not isinstance(blob, dict) or "model" not in blob or not isinstance(blob["model"], dict):
        raise CheckpointError(f"checkpoint {path} is not in the published format (a dict with a 'model' state dict)")
    return blob["model"]


def load_checkpoint(model: torch.nn.Module, path: Path) -> torch.nn.Module:
    """Load a published-format checkpoint into ``model`` strictly, naming any key problems."""
    state = read_state_dict(path)
    expected = set(model.state_dict().keys())
    missing = sorted(expected - state.keys())
    unexpected = sorted(state.keys() - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path} does not match MedSAM2 (SAM2.1-tiny 512): "
            f"{len(missing)} missing keys {_preview(missing)}, {len(unexpected)} unexpected keys {_preview(unexpected)}"
        )
    own = model.state_dict()
    wrong_shape = [k for k, v in state.items() if tuple(v.shape) != tuple(own[k].shape)]
    if wrong_shape:
        k = wrong_shape[0]
        raise CheckpointError(
            f"checkpoint {path} does not match the config: {len(wrong_shape)} tensors have other shapes, "
            f"e.g. {k} is {tuple(state[k].shape)}, expected {tuple(own[k].shape)}"
        )
    model.load_state_dict(state, strict=True)
    return model.eval()


def _preview(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    more = f", ... (+{len(keys) - limit})" if len(keys) > limit else ""
    return f"[{shown}{more}]"


def load_model(checkpoint: Path, config_path: Path = DEFAULT_CONFIG) -> torch.nn.Module:
    """Build MedSAM2 and load ``checkpoint`` into it."""
    return load_checkpoint(build_model(config_path), checkpoint)


@dataclass(frozen=True, slots=True)
class RandomCheckpoint:
    """What ``write_random_checkpoint`` produced."""

    path: Path
    seed: int
    objects: ObjectBias
    num_tensors: int


def write_random_checkpoint(seed: int, out: Path, objects: ObjectBias | str = ObjectBias.PRESENT) -> RandomCheckpoint:
    """Write a seeded, untrained checkpoint in the published format (for development and tests)."""
    objects = ObjectBias(objects)
    out = Path(out)
    _ensure_writable_parent(out)
    torch.manual_seed(seed)
    model = build_model()
    state = model.state_dict()
    if objects is not ObjectBias.RANDOM:
        # A plain random head predicts "absent" on every tracked frame, hiding the tracking path.
        state[OBJECT_SCORE_BIAS_KEY] = torch.full_like(state[OBJECT_SCORE_BIAS_KEY], OBJECT_BIAS_VALUE[objects])
    write_atomic(
        out, lambda tmp: torch.save({"model": state, "untrained": {"seed": seed, "objects": objects.value}}, tmp)
    )
    log.warning(
        "wrote an UNTRAINED random checkpoint (seed %d, objects %s) to %s: its masks are meaningless",
        seed,
        objects.value,
        out,
    )
    return RandomCheckpoint(out, seed, objects, len(state))


def _ensure_writable_parent(out: Path) -> None:
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputNotWritable(f"cannot create output folder {parent}: {exc.strerror or exc}") from exc
    if not parent.is_dir():
        raise OutputNotWritable(f"output folder {parent} is not a folder")
