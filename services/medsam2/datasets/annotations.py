"""SaveAnnotation on the client: a study's image and its final (corrected) masks as a MedSAM2 training case.

The folder it writes is what ``medsam2 finetune --dataset`` reads. The image is stored windowed to uint8
exactly as the service was given it (the same preset), so training sees what the model saw.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import numpy as np

from medsam2.datasets.training_npz import TrainingCase, write_training_case
from medsam2.errors import InvalidInput, OutputNotWritable
from medsam2.io.labels import LabelValues, build_labels


def check_annotation_folder(folder: Path) -> None:
    """Create ``folder`` and prove it is writable, before any work that would be lost."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        probe = Path(folder) / ".medsam2-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputNotWritable(f"cannot write annotations to {folder}: {exc.strerror or exc}") from exc


def label_map(masks: dict[int, np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """The objects' masks as one uint16 label volume whose values are the object ids (``io.labels``' overlap rule)."""
    return build_labels(masks, shape, LabelValues.OBJECT_IDS)


def save_annotation(
    folder: Path,
    name: str,
    imgs: np.ndarray,
    labels: np.ndarray,
    spacing: tuple[float, float, float],
    *,
    modality: str = "CT",
    video: bool = False,
    provenance: dict[str, Any] | None = None,
) -> Path:
    """Write ``folder/<name>-<UTC time>.npz`` with the image, the label map and provenance; returns the path."""
    if imgs.shape != labels.shape:
        raise InvalidInput(f"annotation masks {labels.shape} do not match the image {imgs.shape}")
    stamp = dt.datetime.now(dt.UTC)
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "study"
    record = {"saved_at": stamp.isoformat(timespec="seconds")} | dict(provenance or {})
    case = TrainingCase(
        f"{safe}-{stamp:%Y%m%dT%H%M%S%fZ}",
        np.ascontiguousarray(imgs, np.uint8),
        labels,
        tuple(float(s) for s in spacing),
        modality,
        video,
        record,
    )
    return write_training_case(folder, case)
