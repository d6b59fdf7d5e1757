"""The evaluation loop: check every case, prompt every object from its ground truth, segment, score."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from medsam2.engine.protocols import ObjectPrompt
from medsam2.evaluation.cases import CaseSource, load_case
from medsam2.evaluation.metrics import dice, nsd
from medsam2.evaluation.predictors import Predictor
from medsam2.evaluation.prompts import ground_truth_prompt

DEFAULT_TOLERANCE_MM = 2.0
"""NSD tolerance; MedSAM's and MedSAM2's evaluations use 2 mm for CT/MR lesions."""


@dataclass(frozen=True, slots=True)
class EvaluationOptions:
    """How prompts are made and surfaces compared."""

    tolerance_mm: float = DEFAULT_TOLERANCE_MM
    jitter_px: float = 0.0
    seed: int = 0


@dataclass(frozen=True, slots=True)
class ObjectScore:
    """One labelled object's result: one CSV row."""

    case: str
    object: int
    modality: str
    video: bool
    key_slice: int
    box: str
    dsc: float
    nsd: float
    truth_voxels: int
    predicted_voxels: int
    seconds: float

    def to_json(self) -> dict:
        """The row as a dict (CSV and JSON)."""
        return asdict(self)


def check_cases(sources: Sequence[CaseSource]) -> None:
    """Read and check every case before the model runs, so bad data fails before any work."""
    for source in sources:
        load_case(source)


def evaluate(
    sources: Sequence[CaseSource],
    predictor: Predictor,
    options: EvaluationOptions = EvaluationOptions(),
    *,
    on_case: Callable[[str], None] | None = None,
    save_predictions: Path | None = None,
    model_version: str = "",
) -> list[ObjectScore]:
    """Score ``predictor`` on every object of every case with the paper's protocol."""
    rng = np.random.default_rng(options.seed)
    rows: list[ObjectScore] = []
    for source in sources:
        case = load_case(source)
        prompts, boxes = [], {}
        for label in case.labels:
            gt = ground_truth_prompt(case.gts == label, video=case.video, jitter_px=options.jitter_px, rng=rng)
            prompts.append(ObjectPrompt(obj_id=label, frame=gt.frame, box=gt.box))
            boxes[label] = gt
        started = time.perf_counter()
        masks = predictor.segment(case, prompts)
        seconds = (time.perf_counter() - started) / max(len(prompts), 1)
        for label in case.labels:
            truth, predicted = case.gts == label, masks[label]
            b = boxes[label].box
            rows.append(
                ObjectScore(
                    case=case.name,
                    object=label,
                    modality=case.modality,
                    video=case.video,
                    key_slice=boxes[label].frame,
                    box=f"{b.x0:g},{b.y0:g},{b.x1:g},{b.y1:g}",
                    dsc=round(dice(predicted, truth), 6),
                    nsd=round(nsd(predicted, truth, case.spacing, options.tolerance_mm), 6),
                    truth_voxels=int(truth.sum()),
                    predicted_voxels=int(predicted.sum()),
                    seconds=round(seconds, 3),
                )
            )
        if save_predictions is not None:
            _save_prediction(save_predictions, case.name, masks, case.spacing, model_version or predictor.name)
        if on_case is not None:
            on_case(case.name)
    return rows


def _save_prediction(folder: Path, name: str, masks: dict[int, np.ndarray], spacing: tuple, model: str) -> None:
    from medsam2.io.outputs import label_map

    folder.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        folder / f"{name}.npz", segs=label_map(masks), spacing=np.asarray(spacing), model_version=np.str_(model)
    )
