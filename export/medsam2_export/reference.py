"""The numerical reference: sam2 1.1.0's ``SAM2VideoPredictor`` on the same raw slices as our engine.

Frames go in exactly as sam2's loader would read them from image files
(grey -> RGB, Pillow bicubic resize to 512, /255, ImageNet mean/std), without
a lossy JPEG round trip.  Hole filling is off (it needs sam2's CUDA extension).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from PIL import Image

from medsam2.engine.prompts import Box
from medsam2_export.model import load_model
from medsam2_export.wrappers.image_encoder import IMAGENET_MEAN, IMAGENET_STD


def load_frames_like_sam2(frames: np.ndarray, image_size: int = 512) -> torch.Tensor:
    """uint8 slices [N, H, W] -> normalised float32 [N, 3, 512, 512], as sam2's ``load_video_frames``."""
    images = torch.zeros(frames.shape[0], 3, image_size, image_size, dtype=torch.float32)
    for i, frame in enumerate(frames):
        rgb = Image.fromarray(np.ascontiguousarray(frame)).convert("RGB").resize((image_size, image_size))
        images[i] = torch.from_numpy(np.array(rgb) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32)[:, None, None]
    return (images - mean) / std


class ReferenceTracker:
    """A thin driver of ``SAM2VideoPredictor`` with the same operations as our ``Tracker``."""

    def __init__(self, checkpoint, frames: np.ndarray) -> None:  # noqa: ANN001 - a path
        self.predictor = load_model(checkpoint)
        self.num_frames, self.height, self.width = frames.shape[:3]
        self.state = self._init_state(load_frames_like_sam2(frames, self.predictor.image_size))

    def _init_state(self, images: torch.Tensor) -> dict:
        # sam2's init_state, minus reading files.
        cpu = torch.device("cpu")
        return {
            "images": images,
            "num_frames": images.shape[0],
            "offload_video_to_cpu": False,
            "offload_state_to_cpu": False,
            "video_height": self.height,
            "video_width": self.width,
            "device": cpu,
            "storage_device": cpu,
            "point_inputs_per_obj": {},
            "mask_inputs_per_obj": {},
            "cached_features": {},
            "constants": {},
            "obj_id_to_idx": OrderedDict(),
            "obj_idx_to_id": OrderedDict(),
            "obj_ids": [],
            "output_dict_per_obj": {},
            "temp_output_dict_per_obj": {},
            "frames_tracked_per_obj": {},
        }

    def add_prompt(
        self,
        obj_id: int,
        frame: int,
        box: Box | None = None,
        points=None,  # noqa: ANN001
        labels=None,  # noqa: ANN001
        clear_old: bool = True,
    ) -> dict[int, np.ndarray]:
        """sam2's ``add_new_points_or_box``; returns each object's low-res logits on the frame."""
        with torch.inference_mode():
            self.predictor.add_new_points_or_box(
                self.state,
                frame_idx=frame,
                obj_id=obj_id,
                points=None if points is None else np.asarray(points, np.float32),
                labels=None if labels is None else np.asarray(labels, np.int32),
                box=None if box is None else np.array([box.x0, box.y0, box.x1, box.y1], np.float32),
                clear_old_points=clear_old,
            )
        return self.low_res(frame)

    def add_mask(self, obj_id: int, frame: int, mask: np.ndarray) -> dict[int, np.ndarray]:
        """sam2's ``add_new_mask``."""
        with torch.inference_mode():
            self.predictor.add_new_mask(self.state, frame_idx=frame, obj_id=obj_id, mask=np.asarray(mask, bool))
        return self.low_res(frame)

    def propagate(self, start: int | None = None, reverse: bool = False, limit: int | None = None):  # noqa: ANN201
        """Yield (frame, {obj_id: low-res logits}, {obj_id: video-res logits}) per propagated frame."""
        with torch.inference_mode():
            for frame, obj_ids, video_res in self.predictor.propagate_in_video(
                self.state, start_frame_idx=start, max_frame_num_to_track=limit, reverse=reverse
            ):
                video = {obj: video_res[i, 0].numpy().copy() for i, obj in enumerate(obj_ids)}
                yield frame, self.low_res(frame), video

    def reset(self) -> None:
        """sam2's ``reset_state``."""
        self.predictor.reset_state(self.state)

    def low_res(self, frame: int) -> dict[int, np.ndarray]:
        """Every object's newest low-res logits on ``frame`` (as sam2 consolidates them)."""
        out = {}
        for obj_id, idx in self.state["obj_id_to_idx"].items():
            temp = self.state["temp_output_dict_per_obj"][idx]
            stored = self.state["output_dict_per_obj"][idx]
            for store in (
                temp["cond_frame_outputs"],
                temp["non_cond_frame_outputs"],
                stored["cond_frame_outputs"],
                stored["non_cond_frame_outputs"],
            ):
                if frame in store:
                    out[obj_id] = store[frame]["pred_masks"][0, 0].float().numpy().copy()
                    break
        return out
