"""A tiny deterministic ``StageBackend`` in numpy, for unit tests of bookkeeping without real graphs.

Every stage returns tensors of the contract's names, dtypes and shapes (``medsam2.graphs``), computed from its
inputs so that prompts and memories visibly change the outputs:

- the image "features" are block means of the slice;
- the SAM heads' logits are positive inside a box, near positive clicks and where a mask prompt is positive,
  negative near negative clicks; without a prompt they follow the memory-conditioned features, so propagation
  carries the previous mask forward;
- the object score is a fixed logit (``object_score``), so present and absent paths can both be driven.

It is NOT the model: parity and integration tests always run the exported graphs.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from medsam2.engine.backend import check_inputs
from medsam2.graphs import (
    FEAT,
    HIDDEN_DIM,
    IMAGE_SIZE,
    LOW_RES,
    MEM_DIM,
    NUM_MASK_TOKENS,
    POINT_LABEL_BOX_BOTTOM_RIGHT,
    POINT_LABEL_BOX_TOP_LEFT,
    POINT_LABEL_NEGATIVE,
    POINT_LABEL_POSITIVE,
    Stage,
)

CLICK_RADIUS = 24.0
"""Radius, in 512-pixel model coordinates, of the disc a click adds or removes."""


def _block_mean(x: np.ndarray, side: int) -> np.ndarray:
    """Mean over square blocks of the last two axes, down to ``side`` x ``side``."""
    factor = x.shape[-1] // side
    shape = (*x.shape[:-2], side, factor, side, factor)
    return x.reshape(shape).mean(axis=(-3, -1))


def _upsample(x: np.ndarray, side: int) -> np.ndarray:
    """Nearest-neighbour upsampling of the last two axes to ``side`` x ``side``."""
    factor = side // x.shape[-1]
    return np.repeat(np.repeat(x, factor, axis=-2), factor, axis=-1)


class FakeBackend:
    """Implements ``StageBackend`` with cheap numpy stand-ins for each stage (see the module docstring)."""

    name = "fake"
    precision = "fp32"
    fused_track_step = False

    def __init__(self, *, object_score: float = 5.0) -> None:
        self.object_score = np.float32(object_score)
        self.calls: dict[Stage, int] = {}
        """How often each stage ran, for tests of caching and batching."""
        self.closed = False

    def is_ready(self) -> bool:
        """In-process graphs are ready once constructed."""
        return True

    def run(self, stage: Stage, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check ``inputs`` against the contract, then compute the stage's stand-in outputs."""
        check_inputs(stage, inputs)
        self.calls[stage] = self.calls.get(stage, 0) + 1
        handler = {
            Stage.IMAGE_ENCODER: self._image_encoder,
            Stage.MEMORY_ATTENTION: self._memory_attention,
            Stage.SAM_HEADS: self._sam_heads,
            Stage.MEMORY_ENCODER: self._memory_encoder,
            Stage.MASK_DOWNSAMPLER: self._mask_downsampler,
        }.get(stage)
        if handler is None:
            raise NotImplementedError(f"FakeBackend does not implement {stage.value}")
        return handler(inputs)

    def close(self) -> None:
        """Nothing to release; remembered for tests."""
        self.closed = True

    # -- stages -----------------------------------------------------------------------------
    def _image_encoder(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        image = inputs["image"].astype(np.float32).mean(axis=1, keepdims=True) / 255.0
        s0 = _block_mean(image, LOW_RES)
        s1 = _block_mean(image, 2 * FEAT)
        s2 = _block_mean(image, FEAT)
        return {
            "feat_s0": np.repeat(s0, 32, axis=1).astype(np.float32),
            "feat_s1": np.repeat(s1, 64, axis=1).astype(np.float32),
            "feat_s2": np.repeat(s2, HIDDEN_DIM, axis=1).astype(np.float32),
        }

    def _memory_attention(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feat = inputs["feat_s2"]
        valid = inputs["memory_valid"][:, :, None, None, None]
        count = np.maximum(valid.sum(axis=1), 1.0)
        memory = (inputs["memory"] * valid).sum(axis=1) / count  # [B, 64, 32, 32]
        recalled = memory.mean(axis=1, keepdims=True)  # [B, 1, 32, 32]: the remembered mask
        no_memory = inputs["no_memory"][:, None, None, None]
        pix = feat * 0.0 + np.where(no_memory > 0, 0.0, recalled)
        return {"pix_feat": pix.astype(np.float32)}

    def _sam_heads(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = inputs["pix_feat"].shape[0]
        # Without a prompt, a remembered mask (in [0, 1]) becomes logits around 0.5.
        logits = _upsample(inputs["pix_feat"].mean(axis=1), LOW_RES) * 8.0 - 4.0
        logits = np.where(inputs["has_mask_input"][:, None, None] > 0, inputs["mask_input"][:, 0], logits)
        yy, xx = np.mgrid[0:LOW_RES, 0:LOW_RES].astype(np.float32) * (IMAGE_SIZE / LOW_RES)
        for b in range(batch):
            coords, labels = inputs["point_coords"][b], inputs["point_labels"][b]
            corners = {
                int(lab): c
                for c, lab in zip(coords, labels, strict=True)
                if lab in (POINT_LABEL_BOX_TOP_LEFT, POINT_LABEL_BOX_BOTTOM_RIGHT)
            }
            if len(corners) == 2:
                (x0, y0), (x1, y1) = corners[POINT_LABEL_BOX_TOP_LEFT], corners[POINT_LABEL_BOX_BOTTOM_RIGHT]
                inside = (xx >= x0) & (xx <= x1) & (yy >= y0) & (yy <= y1)
                logits[b] = np.where(inside, 6.0, -6.0)
            for (x, y), label in zip(coords, labels, strict=True):
                if label not in (POINT_LABEL_POSITIVE, POINT_LABEL_NEGATIVE):
                    continue
                disc = (xx - x) ** 2 + (yy - y) ** 2 <= CLICK_RADIUS**2
                logits[b] = np.where(disc, 6.0 if label == POINT_LABEL_POSITIVE else -6.0, logits[b])
        masks = np.stack([logits, logits - 0.5, logits + 0.5, logits - 1.0], axis=1).astype(np.float32)
        iou = np.tile(np.array([0.9, 0.6, 0.8, 0.7], np.float32), (batch, 1))
        pointer = np.tile(masks.mean(axis=(2, 3))[:, :, None], (1, 1, HIDDEN_DIM)).astype(np.float32)
        score = np.full((batch, 1), self.object_score, np.float32)
        assert masks.shape[1] == NUM_MASK_TOKENS
        return {"low_res_masks": masks, "iou_scores": iou, "obj_ptrs": pointer, "object_score_logits": score}

    def _memory_encoder(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        logits = inputs["mask_logits"][:, 0]
        binarize = inputs["binarize"][:, None, None] > 0
        mask = np.where(binarize, (logits > 0).astype(np.float32), 1.0 / (1.0 + np.exp(-np.clip(logits, -50, 50))))
        present = (inputs["object_score_logits"] > 0)[:, :, None]
        mask = np.where(present, mask, 0.0)
        pooled = _block_mean(mask, FEAT)[:, None]
        return {"maskmem_features": np.repeat(pooled, MEM_DIM, axis=1).astype(np.float32)}

    def _mask_downsampler(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        pooled = _block_mean(inputs["mask"], LOW_RES)
        return {"mask_input": ((pooled - 0.5) * 20.0).astype(np.float32)}
