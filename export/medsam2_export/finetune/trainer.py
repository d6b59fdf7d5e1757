"""The fine-tuning loop: sam2's own tracking step over 8-slice clips, prompted by a box on the first frame.

Each step tracks one clip the way sam2 trains: frame 0 is the conditioning frame (box prompt), every later
frame is tracked from the memory bank built so far, and each frame's low-resolution mask outputs (128x128; three
on tracked frames), their IoU estimates and the object score are scored against the ground truth with sam2's
loss (see ``losses``). With ``freeze_encoder`` the image path (Hiera, FPN and the
decoder's conv_s0/conv_s1, exactly what the exported image-encoder graph holds) is frozen and its features are
computed once per slice and cached in bf16; the memory encoder's mask downsampler is frozen as well and its
512x512 input detached (its full-resolution backward pass dominates a CPU step); geometric and intensity augmentation then cannot apply (the
features are of the original slices), so only the clip direction and box jitter vary.

Distributed: launched by ``torchrun`` (``WORLD_SIZE`` > 1) each rank samples its own clips and gradients are
averaged with an all-reduce before every optimiser step; rank 0 writes the outputs.
"""  # noqa: E501

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medsam2.datasets.training_npz import TrainingCase
from medsam2.engine.tracker import prepare_frames
from medsam2.errors import CheckpointError, InvalidInput, OutputNotWritable
from medsam2.graphs import IMAGE_SIZE
from medsam2.io.atomic import write_atomic
from medsam2.models.download import file_sha256
from medsam2_export.finetune.data import Clip, dataset_sha256, load_dataset, sample_clip
from medsam2_export.finetune.losses import FrameLoss, frame_loss
from medsam2_export.model import load_model
from medsam2_export.wrappers.image_encoder import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)

ENCODER_LR = 3e-5
DECODER_LR = 5e-5
BETAS = (0.9, 0.999)
WEIGHT_DECAY = 0.01
MAX_JITTER_PX = 10.0


@dataclass(frozen=True, slots=True)
class FinetuneOptions:
    """The recipe's knobs."""

    steps: int = 100
    clip_length: int = 8
    freeze_encoder: bool = False
    annotation_round: bool = False
    """Halve both learning rates, as the paper does for its annotation rounds."""
    lr_scale: float = 1.0
    """Multiply both learning rates: the paper's are for fine-tuning trained weights; an untrained start needs more."""
    jitter_px: float = MAX_JITTER_PX
    augment: bool = True
    seed: int = 0
    save_every: int = 50


@dataclass(frozen=True, slots=True)
class FinetuneResult:
    """What a run did."""

    out: Path
    steps: int
    losses: list[float]
    seconds: float
    dataset_sha256: str
    base_checkpoint_sha256: str


def state_path(out: Path) -> Path:
    """Where the resumable training state lives, next to the output checkpoint."""
    return out.with_name(out.name + ".train-state")


def check_output(out: Path, dataset: Path) -> None:
    """The output must be writable and outside the dataset (training never writes into its input)."""
    out, dataset = Path(out).resolve(), Path(dataset).resolve()
    if out.is_relative_to(dataset):
        raise OutputNotWritable(f"the output {out} is inside the dataset {dataset}: finetune never writes there")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        probe = out.with_name(f".{out.name}.write-test")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputNotWritable(f"cannot write the output checkpoint {out}: {exc.strerror or exc}") from exc
    if out.is_dir():
        raise OutputNotWritable(f"the output {out} is a folder; give a file name such as new.pt")


def _to_input(images: np.ndarray) -> torch.Tensor:
    """uint8 [T, H, W] -> normalised float [T, 3, 512, 512], resized as the engine does (Pillow bicubic)."""
    x = torch.from_numpy(prepare_frames(np.ascontiguousarray(images))).float() / 255.0
    x = x.expand(-1, 3, -1, -1)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


class FeatureCache:
    """Frozen image features per (case, slice), stored in bf16 (about 2 MB a slice)."""

    def __init__(self, model: torch.nn.Module, cases: list[TrainingCase]) -> None:
        self.model = model
        self.cases = cases
        self.store: dict[tuple[int, int], list[torch.Tensor]] = {}
        self.pos: list[torch.Tensor] | None = None

    def features(self, case: int, frames: tuple[int, ...]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """FPN features [T, C, h, w] per level (after conv_s0/conv_s1) and their position encodings."""
        missing = [f for f in frames if (case, f) not in self.store]
        if missing:
            with torch.no_grad():
                out = _backbone(self.model, _to_input(self.cases[case].imgs[missing]))
            for i, f in enumerate(missing):
                self.store[(case, f)] = [level[i : i + 1].to(torch.bfloat16) for level in out["backbone_fpn"]]
            self.pos = [p[:1] for p in out["vision_pos_enc"]]
        levels = [torch.cat([self.store[(case, f)][k] for f in frames]).float() for k in range(3)]
        return levels, [p.expand(len(frames), -1, -1, -1) for p in self.pos]


def _backbone(model: torch.nn.Module, x: torch.Tensor) -> dict:
    return model.forward_image(x)


def clip_loss(
    model: torch.nn.Module,
    clip: Clip,
    fpn: list[torch.Tensor],
    pos: list[torch.Tensor],
    *,
    detach_memory_masks: bool = False,
    terms: list[FrameLoss] | None = None,
) -> torch.Tensor:
    """Track ``clip`` with sam2's ``track_step`` and return the mean frame loss (``terms`` collects each frame's).

    ``detach_memory_masks`` stops the gradient at the 512x512 mask that enters the memory encoder: its
    convolutions' backward pass at full resolution dominates a CPU step (measured: 40% of the time).
    """
    _, vision_feats, vision_pos, feat_sizes = model._prepare_backbone_features(
        {"backbone_fpn": fpn, "vision_pos_enc": pos}
    )
    height, width = clip.masks.shape[1:]
    scale = torch.tensor([IMAGE_SIZE / width, IMAGE_SIZE / height])
    box = torch.tensor(clip.box, dtype=torch.float32).view(2, 2) * scale
    point_inputs = {"point_coords": box.view(1, 2, 2), "point_labels": torch.tensor([[2, 3]], dtype=torch.int32)}
    low_res = IMAGE_SIZE // 4
    targets = F.interpolate(
        torch.from_numpy(clip.masks.astype(np.float32))[:, None], size=(low_res, low_res), mode="area"
    )
    targets = (targets >= 0.5).float()
    output: dict = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
    total = torch.zeros(())
    frames = len(clip.frames)
    for t in range(frames):
        feats = [v[:, t : t + 1] for v in vision_feats]
        prompt = point_inputs if t == 0 else None
        # sam2's track_step, unrolled: in training mode it does not return the object score we supervise.
        out, sam_outputs, _, _ = model._track_step(
            t,
            t == 0,
            feats,
            [p[:, t : t + 1] for p in vision_pos],
            feat_sizes,
            prompt,
            None,
            output,
            frames,
            False,
            None,
        )
        # All outputs (3 on tracked frames, 1 on the box-prompted frame) and their IoU estimates are supervised,
        # as sam2's MultiStepMultiMasksAndIous does; the chosen one (highest estimated IoU) feeds the memory.
        multimasks, ious, low_res_masks, high_res_masks, obj_ptr, object_logits = (
            sam_outputs[0],
            *sam_outputs[2:7],
        )
        out["pred_masks"], out["pred_masks_high_res"], out["obj_ptr"] = low_res_masks, high_res_masks, obj_ptr
        memory_masks = high_res_masks.detach() if detach_memory_masks else high_res_masks
        model._encode_memory_in_output(feats, feat_sizes, prompt, True, memory_masks, object_logits, out)
        output["cond_frame_outputs" if t == 0 else "non_cond_frame_outputs"][t] = out
        term = frame_loss(multimasks, ious, object_logits, targets[t : t + 1])
        total = total + term.total
        if terms is not None:
            terms.append(term)
    return total / frames


def _distributed() -> tuple[int, int]:
    """(rank, world size), initialising the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world


def _parameter_groups(model: torch.nn.Module, options: FinetuneOptions) -> list[dict]:
    scale = options.lr_scale * (0.5 if options.annotation_round else 1.0)
    frozen_prefixes = (
        "image_encoder.",
        "sam_mask_decoder.conv_s0.",
        "sam_mask_decoder.conv_s1.",
        "memory_encoder.mask_downsampler.",
    )
    encoder, rest = [], []
    for name, param in model.named_parameters():
        if name.startswith("image_encoder."):
            encoder.append(param)
        else:
            rest.append(param)
        if options.freeze_encoder and name.startswith(frozen_prefixes):
            param.requires_grad_(False)
    groups = [{"params": [p for p in rest if p.requires_grad], "lr": DECODER_LR * scale}]
    if not options.freeze_encoder:
        groups.append({"params": encoder, "lr": ENCODER_LR * scale})
    return groups


def finetune(
    checkpoint: Path,
    dataset: Path,
    out: Path,
    options: FinetuneOptions = FinetuneOptions(),
    *,
    resume: bool = False,
    on_step: Callable[[int, float], None] | None = None,
) -> FinetuneResult:
    """Fine-tune ``checkpoint`` on the npz cases of ``dataset`` and write ``out`` in the published format.

    Everything is checked before the first step: the dataset (shapes, empty labels, clip length), the
    checkpoint (format and config), and the output (writable, outside the dataset).
    """
    if options.steps < 1:
        raise InvalidInput(f"--steps must be 1 or more, got {options.steps}")
    if not options.lr_scale > 0:
        raise InvalidInput(f"--lr-scale must be positive, got {options.lr_scale}")
    if options.clip_length < 2:
        raise InvalidInput(f"--clip-length must be 2 or more, got {options.clip_length}")
    out = Path(out)
    check_output(out, dataset)
    cases = load_dataset(dataset, clip_length=options.clip_length)
    data_hash = dataset_sha256(dataset)
    base_hash = file_sha256(checkpoint)
    model = load_model(checkpoint)
    rank, world = _distributed()
    device = (
        torch.device("cuda", rank % torch.cuda.device_count()) if torch.cuda.is_available() else torch.device("cpu")
    )
    model.to(device).train()
    optimizer = torch.optim.AdamW(_parameter_groups(model, options), betas=BETAS, weight_decay=WEIGHT_DECAY)
    step, losses = 0, []
    rng = np.random.default_rng([options.seed, rank])
    torch.manual_seed(options.seed)
    state_file = state_path(out)
    if resume:
        step, losses, rng = _load_state(state_file, model, optimizer, base_hash, data_hash, options)
    cache = FeatureCache(model, cases) if options.freeze_encoder else None
    started = time.perf_counter()
    while step < options.steps:
        clip = sample_clip(
            cases,
            rng,
            clip_length=options.clip_length,
            jitter_px=options.jitter_px,
            augment=options.augment and not options.freeze_encoder,
        )
        if cache is not None:
            fpn, pos = cache.features(clip.case, clip.frames)
        else:
            backbone = model.forward_image(_to_input(clip.images).to(device))
            fpn, pos = backbone["backbone_fpn"], backbone["vision_pos_enc"]
        loss = clip_loss(
            model,
            clip,
            [f.to(device) for f in fpn],
            [p.to(device) for p in pos],
            detach_memory_masks=options.freeze_encoder,
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if world > 1:
            _average_gradients(model, world)
        optimizer.step()
        step += 1
        losses.append(float(loss.detach()))
        if on_step is not None and rank == 0:
            on_step(step, losses[-1])
        if rank == 0 and (step % options.save_every == 0 or step == options.steps):
            _save_state(state_file, model, optimizer, step, losses, rng, base_hash, data_hash, options)
    seconds = time.perf_counter() - started
    if rank == 0:
        _write_checkpoint(
            out,
            model,
            {
                "base_checkpoint_sha256": base_hash,
                "dataset_sha256": data_hash,
                "steps": step,
                "seed": options.seed,
                "options": asdict(options),
                "world_size": world,
                "final_loss": losses[-1] if losses else None,
            },
        )
    return FinetuneResult(out, step, losses, seconds, data_hash, base_hash)


def _average_gradients(model: torch.nn.Module, world: int) -> None:
    import torch.distributed as dist

    for param in model.parameters():
        if param.grad is not None:
            dist.all_reduce(param.grad)
            param.grad /= world


def _write_checkpoint(out: Path, model: torch.nn.Module, provenance: dict) -> None:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    write_atomic(out, lambda tmp: torch.save({"model": state, "provenance": provenance}, tmp))


def _save_state(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    losses: list[float],
    rng: np.random.Generator,
    base: str,
    data: str,
    options: FinetuneOptions,
) -> None:
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "losses": losses,
        "rng": rng.bit_generator.state,
        "torch_rng": torch.get_rng_state(),
        "base_checkpoint_sha256": base,
        "dataset_sha256": data,
        "options": asdict(options),
    }
    write_atomic(path, lambda tmp: torch.save(state, tmp))


def _load_state(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, base: str, data: str, options: FinetuneOptions
) -> tuple[int, list[float], np.random.Generator]:
    if not path.is_file():
        raise CheckpointError(f"nothing to resume: {path} does not exist (run without --resume first)")
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state["base_checkpoint_sha256"] != base or state["dataset_sha256"] != data:
        raise CheckpointError(f"{path} was made from another base checkpoint or dataset: start afresh without --resume")
    if state["options"]["freeze_encoder"] != options.freeze_encoder:
        raise CheckpointError(f"{path} was trained with freeze_encoder={state['options']['freeze_encoder']}")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    rng = np.random.default_rng()
    rng.bit_generator.state = state["rng"]
    return int(state["step"]), list(state["losses"]), rng
