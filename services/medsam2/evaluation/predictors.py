"""What produces the masks being scored: the local engine, a deployed service, or (as a test hook) the truth."""

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


class ServicePredictor:
    """A deployed ``medsam2 serve``: upload, prompt, propagate and fetch the labels through the gRPC client."""

    def __init__(self, target: str, *, token: str = "") -> None:
        from medsam2.api.client import Client

        self.client = Client(target, token=token)
        self.name = f"service {target}"

    def segment(self, case: TrainingCase, prompts: Sequence[ObjectPrompt]) -> dict[int, np.ndarray]:
        """One session per case (and, for videos, per start frame), closed afterwards."""
        if not case.video:
            return self._session(case.imgs, case, prompts)
        masks: dict[int, np.ndarray] = {}
        for start in sorted({p.frame for p in prompts}):
            group = [ObjectPrompt(p.obj_id, 0, box=p.box) for p in prompts if p.frame == start]
            for obj_id, mask in self._session(case.imgs[start:], case, group).items():
                full = np.zeros(case.imgs.shape, bool)
                full[start:] = mask
                masks[obj_id] = full
        return masks

    def _session(self, imgs: np.ndarray, case: TrainingCase, prompts: Sequence[ObjectPrompt]) -> dict[int, np.ndarray]:
        session = self.client.create_session(imgs, spacing=case.spacing, preset="none", video=case.video)
        try:
            for p in prompts:
                self.client.add_box(session.session_id, p.obj_id, p.frame, (p.box.x0, p.box.y0, p.box.x1, p.box.y1))
            for _ in self.client.propagate(session.session_id):
                pass
            labels, object_ids = self.client.result_labels(session.session_id)
        finally:
            self.client.close_session(session.session_id)
        return {
            p.obj_id: labels == object_ids.index(p.obj_id) + 1 if p.obj_id in object_ids else np.zeros(imgs.shape, bool)
            for p in prompts
        }

    def close(self) -> None:
        """Close the channel."""
        self.client.close()


class TruthPredictor:
    """Test hook: answers every prompt with the ground truth itself, so a correct scorer gives DSC = NSD = 1."""

    name = "ground truth"

    def segment(self, case: TrainingCase, prompts: Sequence[ObjectPrompt]) -> dict[int, np.ndarray]:
        """The ground-truth mask of each prompted label."""
        return {p.obj_id: case.gts == p.obj_id for p in prompts}

    def close(self) -> None:
        """Nothing to release."""
