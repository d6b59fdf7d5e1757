"""``medsam2 evaluate --server``: a deployed service as the predictor being scored, through the gRPC client."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medsam2.api.client import Client
from medsam2.datasets.training_npz import TrainingCase
from medsam2.engine.protocols import ObjectPrompt


class ServicePredictor:
    """A deployed ``medsam2 serve``: upload, prompt, propagate and fetch the labels through the gRPC client."""

    def __init__(self, target: str, *, token: str = "") -> None:
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
