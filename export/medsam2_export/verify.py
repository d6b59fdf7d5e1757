"""Check every ONNX stage graph against the same sam2 PyTorch modules on seeded inputs.

The reference side calls sam2's own methods (``forward_image``,
``_prepare_memory_conditioned_features``, ``_forward_sam_heads``,
``_encode_new_memory``), so the comparison covers our wrappers, the export and
the numpy bookkeeping that feeds the graphs.  Cases: prompted and
memory-conditioned frames, forward and reverse tracking, object present and
absent.
"""

from __future__ import annotations

import copy
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from medsam2.backends.onnxruntime_backend import make_session
from medsam2.engine.mask_choice import choose_mask, use_multimask
from medsam2.engine.memory_bank import FrameMemory, batch_memory, empty_memory, gather_memory
from medsam2.engine.prompts import ModelPoints, prompt_inputs
from medsam2.engine.resize import resize_bilinear
from medsam2.graphs import (
    FEAT,
    GRAPHS,
    HIDDEN_DIM,
    IMAGE_SIZE,
    LOW_RES,
    MEM_DIM,
    Stage,
)
from medsam2_export.model import OBJECT_SCORE_BIAS_KEY, load_model
from medsam2_export.onnx_export import export_all, export_graph, find_graph
from medsam2_export.wrappers.image_encoder import IMAGENET_MEAN, IMAGENET_STD

TOLERANCE = 1e-4
"""Largest absolute difference allowed for any stage output in fp32."""


@dataclass(slots=True)
class VerifyReport:
    """Worst absolute error per stage and output."""

    stages: dict[str, dict[str, float]] = field(default_factory=lambda: defaultdict(dict))
    cases: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def record(self, stage: Stage, output: str, ours: np.ndarray, ref: torch.Tensor | np.ndarray, case: str) -> None:
        """Keep the worst error seen for ``stage.output``."""
        ref_np = ref.detach().cpu().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref)
        if ours.shape != ref_np.shape:
            raise AssertionError(f"{stage.value}.{output} ({case}): shape {ours.shape} vs reference {ref_np.shape}")
        err = float(np.max(np.abs(ours.astype(np.float64) - ref_np.astype(np.float64)))) if ours.size else 0.0
        table = self.stages[stage.value]
        table[output] = max(table.get(output, 0.0), err)
        self.cases[case] += 1

    @property
    def max_abs_err(self) -> float:
        """The worst error over every stage and output."""
        return max(v for table in self.stages.values() for v in table.values())

    def to_json(self) -> dict:
        """The report as printed by ``medsam2 verify --json``."""
        return {
            "stages": {k: dict(v) for k, v in self.stages.items()},
            "max_abs_err": self.max_abs_err,
            "tolerance": TOLERANCE,
            "cases": dict(self.cases),
        }


def ort_session(path: Path, threads: int | None = None):  # noqa: ANN201 - onnxruntime is optional at import
    """An ONNX Runtime CPU session for one graph (on the process's shared pool, as the backend's)."""
    return make_session(path, threads or 0)


def verify(checkpoint: Path, onnx_dir: Path | None = None, seed: int = 0, threads: int | None = None) -> VerifyReport:
    """Export (unless ``onnx_dir`` holds the graphs) and compare every stage with sam2."""
    model = load_model(checkpoint)
    with tempfile.TemporaryDirectory(prefix="medsam2-verify-") as tmp:
        if onnx_dir is None:
            onnx_dir = Path(tmp) / "graphs"
            export_all(model, onnx_dir)
        sessions = {stage: ort_session(find_graph(onnx_dir, stage), threads) for stage in GRAPHS}
        checker = _Checker(model, sessions, np.random.default_rng(seed))
        checker.image_encoder()
        checker.memory_attention()
        checker.memory_encoder()
        checker.mask_downsampler()
        checker.mask_select()
        checker.sam_heads("checkpoint")
        # Both object states go through the exported heads whatever the checkpoint predicts.
        for label, bias in (("forced-present", 10.0), ("forced-absent", -10.0)):
            variant = _with_object_bias(model, bias)
            path = export_graph(variant, Stage.SAM_HEADS, Path(tmp) / f"sam_heads_{label}.onnx")
            variant_sessions = {**sessions, Stage.SAM_HEADS: ort_session(path, threads)}
            _Checker(variant, variant_sessions, checker.rng, checker.report).sam_heads(label)
        return checker.report


def _with_object_bias(model: torch.nn.Module, bias: float) -> torch.nn.Module:
    variant = copy.deepcopy(model)
    state = variant.state_dict()
    with torch.no_grad():
        state[OBJECT_SCORE_BIAS_KEY].fill_(bias)
    return variant


class _Checker:
    """Runs one stage on both sides and records the differences."""

    def __init__(
        self, model: torch.nn.Module, sessions: dict, rng: np.random.Generator, report: VerifyReport | None = None
    ) -> None:
        self.model = model
        self.sessions = sessions
        self.rng = rng
        self.report = report if report is not None else VerifyReport()

    def run(self, stage: Stage, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self.sessions[stage]
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, inputs), strict=False))

    # -- image encoder ------------------------------------------------------------------
    def image_encoder(self) -> None:
        image = self.rng.integers(0, 256, (2, 1, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
        ours = self.run(Stage.IMAGE_ENCODER, {"image": image})
        # sam2's loader: uint8 / 255 in float64, stored as float32, then ImageNet normalisation.
        x = torch.from_numpy(np.repeat(image, 3, axis=1) / 255.0).float()
        x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        with torch.no_grad():
            fpn = self.model.forward_image(x)["backbone_fpn"]
        for name, ref in zip(("feat_s0", "feat_s1", "feat_s2"), fpn, strict=False):
            self.report.record(Stage.IMAGE_ENCODER, name, ours[name], ref, "image")

    # -- memory attention ---------------------------------------------------------------
    def _frame_memory(self) -> FrameMemory:
        return FrameMemory(
            maskmem=self.rng.standard_normal((MEM_DIM, FEAT, FEAT)).astype(np.float32),
            obj_ptr=self.rng.standard_normal(HIDDEN_DIM).astype(np.float32),
        )

    def memory_attention(self) -> None:
        num_frames = 40
        cases = [
            ("forward-full", 20, {10: None}, range(11, 20), False),
            ("forward-early", 12, {10: None}, range(11, 12), False),
            ("reverse-full", 5, {10: None}, range(6, 10), True),
            ("forward-3-cond", 25, {3: None, 10: None, 30: None}, range(14, 25), False),
            ("reverse-2-cond", 8, {20: None, 5: None}, range(9, 20), True),
            ("init", 10, {}, range(0), False),
        ]
        items, flags, refs = [], [], []
        feats = self.rng.standard_normal((len(cases), HIDDEN_DIM, FEAT, FEAT)).astype(np.float32)
        for (name, frame, cond_frames, tracked, reverse), feat in zip(cases, feats, strict=False):  # noqa: B007
            cond = {t: self._frame_memory() for t in cond_frames}
            non_cond = {t: self._frame_memory() for t in tracked}
            if cond:
                items.append(gather_memory(frame, cond, non_cond, num_frames, reverse))
                flags.append(False)
            else:
                items.append(empty_memory())
                flags.append(True)
            refs.append(self._reference_memory_attention(feat, frame, cond, non_cond, num_frames, reverse))
        ours = self.run(Stage.MEMORY_ATTENTION, {"feat_s2": feats, **batch_memory(items, flags)})["pix_feat"]
        for (name, *_), out, ref in zip(cases, ours, refs, strict=False):
            self.report.record(Stage.MEMORY_ATTENTION, "pix_feat", out[None], ref, f"memory_attention/{name}")

    def _reference_memory_attention(self, feat, frame, cond, non_cond, num_frames, reverse) -> torch.Tensor:  # noqa: ANN001
        model = self.model
        with torch.no_grad():
            mem_pos = model.memory_encoder.position_encoding(torch.zeros(1, MEM_DIM, FEAT, FEAT))
            curr_pos = model.image_encoder.neck.position_encoding(torch.zeros(1, HIDDEN_DIM, FEAT, FEAT))

            def as_output(m: FrameMemory) -> dict:
                return {
                    "maskmem_features": torch.from_numpy(m.maskmem)[None],
                    "maskmem_pos_enc": [mem_pos],
                    "obj_ptr": torch.from_numpy(m.obj_ptr)[None],
                }

            output_dict = {
                "cond_frame_outputs": {t: as_output(m) for t, m in cond.items()},
                "non_cond_frame_outputs": {t: as_output(m) for t, m in non_cond.items()},
            }
            return model._prepare_memory_conditioned_features(
                frame_idx=frame,
                is_init_cond_frame=not cond,
                current_vision_feats=[torch.from_numpy(feat).flatten(1).permute(1, 0)[:, None]],
                current_vision_pos_embeds=[curr_pos.flatten(2).permute(2, 0, 1)],
                feat_sizes=[(FEAT, FEAT)],
                output_dict=output_dict,
                num_frames=num_frames,
                track_in_reverse=reverse,
            )

    # -- SAM heads ----------------------------------------------------------------------
    def sam_heads(self, label: str) -> None:
        cases = {
            "box": self._points([[40.0, 60.0], [300.0, 280.0]], [2, 3]),
            "click": self._points([[200.0, 210.0]], [1]),
            "clicks": self._points([[200.0, 210.0], [100.0, 90.0], [411.5, 17.25]], [1, 0, 1]),
            "tracking": None,
        }
        for name, points in cases.items():
            self._sam_heads_case(f"{label}/{name}", points, mask=None, is_init=name != "tracking")
        prev_logits = (self.rng.standard_normal((1, 1, LOW_RES, LOW_RES)) * 8).clip(-32, 32).astype(np.float32)
        self._sam_heads_case(f"{label}/correction", self._points([[120.0, 130.0]], [0]), prev_logits, is_init=False)
        self._mask_prompt_case(f"{label}/mask-prompt")

    def _points(self, coords: list[list[float]], labels: list[int]) -> tuple[np.ndarray, np.ndarray]:
        return np.array([coords], np.float32), np.array([labels], np.int32)

    def _features(self) -> dict[str, np.ndarray]:
        return {
            "pix_feat": self.rng.standard_normal((1, HIDDEN_DIM, FEAT, FEAT)).astype(np.float32),
            "feat_s0": self.rng.standard_normal((1, 32, LOW_RES, LOW_RES)).astype(np.float32),
            "feat_s1": self.rng.standard_normal((1, 64, 2 * FEAT, 2 * FEAT)).astype(np.float32),
        }

    def _sam_heads_case(self, case: str, points, mask: np.ndarray | None, is_init: bool, feats=None) -> None:  # noqa: ANN001
        feats = feats or self._features()
        ours = self.run(Stage.SAM_HEADS, {**feats, **sam_heads_prompt_inputs(points, mask)})
        num_points = 0 if points is None else points[1].shape[1]
        multimask = use_multimask(is_init, num_points)
        t = {k: torch.from_numpy(v) for k, v in feats.items()}
        point_inputs = None
        if points is not None:
            point_inputs = {"point_coords": torch.from_numpy(points[0]), "point_labels": torch.from_numpy(points[1])}
        with torch.no_grad():
            ref = self.model._forward_sam_heads(
                backbone_features=t["pix_feat"],
                point_inputs=point_inputs,
                mask_inputs=None if mask is None else torch.from_numpy(mask),
                high_res_features=[t["feat_s0"], t["feat_s1"]],
                multimask_output=multimask,
            )
            raw = self._reference_raw_heads(t, point_inputs, mask)
        _, _, _, ref_low, _, ref_ptr, ref_score = ref
        for name, ref_raw in raw.items():
            self.report.record(Stage.SAM_HEADS, name, ours[name], ref_raw, case)
        chosen = choose_mask(
            ours["low_res_masks"], ours["iou_scores"], ours["obj_ptrs"], ours["object_score_logits"], multimask
        )
        self.report.record(Stage.SAM_HEADS, "chosen_low_res_mask", chosen.low_res, ref_low, case)
        self.report.record(Stage.SAM_HEADS, "chosen_obj_ptr", chosen.obj_ptr, ref_ptr, case)
        self.report.cases["object-present" if float(ref_score[0, 0]) > 0 else "object-absent"] += 1

    def _reference_raw_heads(self, t: dict, point_inputs: dict | None, mask: np.ndarray | None) -> dict:
        model = self.model
        if point_inputs is None:
            coords, labels = torch.zeros(1, 1, 2), -torch.ones(1, 1, dtype=torch.int32)
        else:
            coords, labels = point_inputs["point_coords"], point_inputs["point_labels"]
        sparse, dense = model.sam_prompt_encoder(
            points=(coords, labels), boxes=None, masks=None if mask is None else torch.from_numpy(mask)
        )
        masks, iou, tokens, score = model.sam_mask_decoder.predict_masks(
            image_embeddings=t["pix_feat"],
            image_pe=model.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            repeat_image=False,
            high_res_features=[t["feat_s0"], t["feat_s1"]],
        )
        present = (score > 0).float()[:, None]
        ptrs = present * model.obj_ptr_proj(tokens) + (1 - present) * model.no_obj_ptr
        return {"low_res_masks": masks, "iou_scores": iou, "obj_ptrs": ptrs, "object_score_logits": score}

    def _mask_prompt_case(self, case: str) -> None:
        mask = np.zeros((1, 1, IMAGE_SIZE, IMAGE_SIZE), np.float32)
        mask[..., 100:300, 150:320] = 1.0
        low = self.run(Stage.MASK_DOWNSAMPLER, {"mask": mask})["mask_input"]
        feats = self._features()
        ours = self.run(Stage.SAM_HEADS, {**feats, **sam_heads_prompt_inputs(None, low)})
        t = {k: torch.from_numpy(v) for k, v in feats.items()}
        with torch.no_grad():
            ref = self.model._use_mask_as_output(t["pix_feat"], [t["feat_s0"], t["feat_s1"]], torch.from_numpy(mask))
        # A non-empty mask prompt keeps the decoder's token-0 pointer (sam2 overrides presence by the mask).
        self.report.record(Stage.SAM_HEADS, "chosen_obj_ptr", ours["obj_ptrs"][:, 0], ref[5], case)

    # -- memory encoder and mask downsampler ----------------------------------------------
    def memory_encoder(self) -> None:
        for binarize in (True, False):
            for score in (3.5, -2.0):
                feat = self.rng.standard_normal((1, HIDDEN_DIM, FEAT, FEAT)).astype(np.float32)
                logits = (self.rng.standard_normal((1, 1, IMAGE_SIZE, IMAGE_SIZE)) * 4).astype(np.float32)
                scores = np.array([[score]], np.float32)
                ours = self.run(
                    Stage.MEMORY_ENCODER,
                    {
                        "feat_s2": feat,
                        "mask_logits": logits,
                        "binarize": np.array([float(binarize)], np.float32),
                        "object_score_logits": scores,
                    },
                )["maskmem_features"]
                with torch.no_grad():
                    ref, _ = self.model._encode_new_memory(
                        current_vision_feats=[torch.from_numpy(feat).flatten(2).permute(2, 0, 1)],
                        feat_sizes=[(FEAT, FEAT)],
                        pred_masks_high_res=torch.from_numpy(logits),
                        object_score_logits=torch.from_numpy(scores),
                        is_mask_from_pts=binarize,
                    )
                case = f"memory_encoder/{'binarized' if binarize else 'sigmoid'}/{'present' if score > 0 else 'absent'}"
                self.report.record(Stage.MEMORY_ENCODER, "maskmem_features", ours, ref, case)

    def mask_select(self) -> None:
        # Compared with the engine's numpy choice, which the SAM-heads cases tie to sam2's.
        for present in (True, False):
            feats = self._features()
            ours_heads = self.run(Stage.SAM_HEADS, {**feats, **sam_heads_prompt_inputs(None, None)})
            if not present:
                ours_heads["object_score_logits"] = -np.abs(ours_heads["object_score_logits"]) - 1
            out = self.run(
                Stage.MASK_SELECT,
                {k: ours_heads[k] for k in ("low_res_masks", "iou_scores", "obj_ptrs", "object_score_logits")},
            )
            ref = choose_mask(
                ours_heads["low_res_masks"],
                ours_heads["iou_scores"],
                ours_heads["obj_ptrs"],
                ours_heads["object_score_logits"],
                multimask=True,
            )
            case = f"mask_select/{'present' if present else 'absent'}"
            self.report.record(Stage.MASK_SELECT, "chosen_mask", out["chosen_mask"], ref.low_res, case)
            self.report.record(Stage.MASK_SELECT, "chosen_obj_ptr", out["chosen_obj_ptr"], ref.obj_ptr, case)
            self.report.record(
                Stage.MASK_SELECT,
                "mask_logits",
                out["mask_logits"],
                resize_bilinear(ref.low_res, (IMAGE_SIZE, IMAGE_SIZE)),
                case,
            )
            self.report.record(Stage.MASK_SELECT, "binarize", out["binarize"], np.zeros(1, np.float32), case)

    def mask_downsampler(self) -> None:
        mask = (self.rng.random((2, 1, IMAGE_SIZE, IMAGE_SIZE)) > 0.5).astype(np.float32)
        ours = self.run(Stage.MASK_DOWNSAMPLER, {"mask": mask})["mask_input"]
        with torch.no_grad():
            ref = self.model.mask_downsample(torch.from_numpy(mask))
        self.report.record(Stage.MASK_DOWNSAMPLER, "mask_input", ours, ref, "mask_downsampler")


def sam_heads_prompt_inputs(
    points: tuple[np.ndarray, np.ndarray] | None, mask: np.ndarray | None
) -> dict[str, np.ndarray]:
    """One object's prompt packed by the engine's own ``prompt_inputs`` (points [1, N, 2]/[1, N], mask [1, 1, H, W])."""
    prompt = None if points is None else ModelPoints(points[0][0], points[1][0])
    return prompt_inputs([prompt], [None if mask is None else mask[0, 0]])
