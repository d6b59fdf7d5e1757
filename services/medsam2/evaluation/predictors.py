"""What produces the masks being scored: the protocol every predictor follows, and the in-process engine."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from medsam2.datasets.training_npz import TrainingCase
from medsam2.engine.backend import StageBackend
from medsam2.engine.components import largest_component
from medsam2.engine.postprocessing import resolve
from medsam2.engine.protocols import ObjectPrompt, segment_video, segment_volume
from medsam2.engine.tracker import Tracker, TrackerOptions


class Predictor(Protocol):
    """Segments a case's objects from their prompts with MedSAM2's protocols."""

    name: str

    def segment(self, case: TrainingCase, prompts: Sequence[ObjectPrompt]) -> dict[int, np.ndarray]:
        """Boolean mask [slices, rows, columns] per prompted object id."""
        ...

    def close(self) -> None:
        """Release what the predictor holds."""
        ...


class EnginePredictor:
    """The in-process engine over a stage backend (ONNX Runtime or torch)."""

    def __init__(self, backend: StageBackend) -> None:
        self.backend = backend
        self.name = backend.name

    def segment(self, case: TrainingCase, prompts: Sequence[ObjectPrompt]) -> dict[int, np.ndarray]:
        """The 3D protocol for volumes; the video protocol (from each object's first frame) for videos."""
        if not case.video:
            # MedSAM2's 3D post-processing, as the service and `segment` apply it: keep the largest component.
            masks = segment_volume(Tracker(self.backend, case.imgs), prompts)
            return {obj_id: largest_component(mask) for obj_id, mask in masks.items()}
        masks = {}
        for start in sorted({p.frame for p in prompts}):
            # The video protocol prompts frame 0: run it on the clip that starts where the objects appear.
            group = [ObjectPrompt(p.obj_id, 0, box=p.box) for p in prompts if p.frame == start]
            # MedSAM2's video defaults, as a video session of the service resolves them (the --server path).
            video = resolve("video")
            options = TrackerOptions(
                fill_hole_area=video.fill_hole_area,
                non_overlapping_objects=video.non_overlapping_objects,
                binarize_memory=video.binarize_memory,
            )
            clip = segment_video(Tracker(self.backend, case.imgs[start:], options), group)
            for obj_id, mask in clip.items():
                full = np.zeros(case.imgs.shape, bool)
                full[start:] = mask
                masks[obj_id] = full
        return masks

    def close(self) -> None:
        """Close the backend."""
        self.backend.close()
