"""MedSAM2's video script against our engine: sam2 1.1.0's predictor as ``medsam2_infer_video.py`` builds it.

The script (Meta's ``tools/vos_inference.py``) calls ``build_sam2_video_predictor`` without
``--apply_postprocessing`` and with ``non_overlap_masks=true``, gives each object's first-frame mask with
``add_new_mask``, propagates forward once and thresholds the returned video-resolution logits at 0. The
reference below is that predictor on the same checkpoint and the same input tensors; our side is
``segment_video`` with the video defaults of ``postprocessing.resolve``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medsam2.backends.onnxruntime_backend import OnnxRuntimeBackend
from medsam2.engine.postprocessing import PostProcessingOptions, resolve
from medsam2.engine.protocols import ObjectPrompt, segment_video
from medsam2.engine.tracker import Tracker, TrackerOptions
from medsam2_export.reference import ReferenceTracker

FRAMES, HEIGHT, WIDTH = 8, 96, 128
TIE = 1e-5
"""A pixel whose reference logits are this close (two objects, or an object and 0) may go either way."""
MAX_DIFFERENT = 0.005
"""At most 0.5% of the pixels of every frame may differ outside ties."""


def touching_objects_video(
    seed: int, *, colour: bool, frames: int = FRAMES
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """A seeded video with two touching ellipses drifting right, and their first-frame masks."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:HEIGHT, :WIDTH]
    channels = 3 if colour else 1
    video = rng.normal(70, 10, (frames, HEIGHT, WIDTH, channels))
    first: dict[int, np.ndarray] = {}
    for t in range(frames):
        shift = 2.0 * t
        taken = np.zeros((HEIGHT, WIDTH), bool)
        for obj_id, (cy, cx, ry, rx, tint) in enumerate(
            ((48, 40, 26, 22, (210, 90, 60)), (48, 83, 22, 21, (120, 190, 80))), start=1
        ):
            inside = (((y - cy) / ry) ** 2 + ((x - cx - shift) / rx) ** 2 <= 1) & ~taken
            taken |= inside
            value = np.array(tint[:channels] if colour else (tint[0] if obj_id == 1 else 150,), float)
            video[t][inside] = value + rng.normal(0, 6, (int(inside.sum()), channels))
            if t == 0:
                first[obj_id] = inside
    pixels = np.clip(video, 0, 255).astype(np.uint8)
    assert (first[1] & first[2]).sum() == 0 and _touch(first[1], first[2])
    return (pixels if colour else pixels[..., 0]), first


def _touch(a: np.ndarray, b: np.ndarray) -> bool:
    grown = a.copy()
    grown[:, 1:] |= a[:, :-1]
    grown[:, :-1] |= a[:, 1:]
    return bool((grown & b).any())


def script_reference(checkpoint: Path, frames: np.ndarray, first: dict[int, np.ndarray]):
    """Per frame, each object's video-resolution logits from sam2's predictor configured as the script."""
    ref = ReferenceTracker(checkpoint, frames)
    model = ref.predictor
    # build_sam2_video_predictor(apply_postprocessing=False) leaves these at the model defaults ...
    model.sam_mask_decoder.dynamic_multimask_via_stability = False
    model.binarize_mask_from_pts_for_mem_enc = False
    model.fill_hole_area = 0
    # ... and the script's hydra override turns this on (DAVIS palette output, not per-object PNGs).
    model.non_overlap_masks = True
    for obj_id, mask in first.items():
        ref.add_mask(obj_id, 0, mask)
    return {frame: video for frame, _, video in ref.propagate(start=0)}


def compare(ours: dict[int, np.ndarray], ref: dict[int, dict[int, np.ndarray]]) -> tuple[float, int, int]:
    """(worst fraction of differing pixels outside ties in a frame, differing pixels, forgiven ties)."""
    worst, differing, ties = 0.0, 0, 0
    ids = sorted(ours)
    for frame, logits in ref.items():
        stack = np.stack([logits[o] for o in ids])
        top2 = np.sort(stack, axis=0)[-2:]
        tie = (np.abs(top2[1] - top2[0]) < TIE) | (np.abs(stack).min(axis=0) < TIE)
        differ = np.zeros(stack.shape[1:], bool)
        for i, obj_id in enumerate(ids):
            differ |= ours[obj_id][frame] != (stack[i] > 0)
        ties += int((differ & tie).sum())
        outside = int((differ & ~tie).sum())
        differing += outside
        worst = max(worst, outside / differ.size)
    return worst, differing, ties


def run_ours(graphs: Path, frames: np.ndarray, first: dict[int, np.ndarray], options: PostProcessingOptions):
    """``segment_video`` with ``options`` on the ONNX graphs; boolean masks per object."""
    tracker_options = TrackerOptions(
        fill_hole_area=options.fill_hole_area,
        non_overlapping_objects=options.non_overlapping_objects,
        binarize_memory=options.binarize_memory,
    )
    tracker = Tracker(OnnxRuntimeBackend(graphs, threads=2), frames, tracker_options)
    prompts = [ObjectPrompt(obj_id, 0, mask=mask) for obj_id, mask in first.items()]
    return segment_video(tracker, prompts)


@pytest.mark.parametrize("colour", [False, True], ids=["grey", "colour"])
def test_video_matches_medsam2_video_script(
    colour: bool, checkpoints: dict[str, Path], graphs: dict[str, Path]
) -> None:
    frames, first = touching_objects_video(5, colour=colour)
    ref = script_reference(checkpoints["present"], frames, first)
    assert sorted(ref) == list(range(FRAMES))
    ours = run_ours(graphs["present"], frames, first, resolve("video"))
    worst, differing, ties = compare(ours, ref)
    print(
        f"{'colour' if colour else 'grey'}: worst frame {worst:.4%} different outside ties, "
        f"{differing} pixels in all; {ties} tie pixels forgiven"
    )
    assert worst <= MAX_DIFFERENT
    # Both objects survive the constraint somewhere, and never share a pixel.
    assert all(m.any() for m in ours.values())
    assert not (ours[1] & ours[2]).any()
