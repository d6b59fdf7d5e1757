"""MedSAM2's npz training format: ``imgs`` (uint8 [slices, rows, columns]), ``gts`` (labels, same shape),
``spacing`` (z, y, x mm), plus our optional keys.

Extra keys that MedSAM2's own loaders ignore: ``modality`` (a string: CT, MR, US, ...), ``video`` (bool: run
the video protocol, not the 3D one) and ``provenance`` (a JSON string: which model and prompts made the masks,
who saved them, when). Strings are stored as numpy unicode scalars, so ``np.load(..., allow_pickle=False)``
reads every key.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medsam2.errors import InvalidInput, NotFound, OutputNotWritable
from medsam2.io.atomic import write_atomic

VIDEO_MODALITIES = frozenset({"US", "ES", "XC", "VIDEO"})


@dataclass(slots=True)
class TrainingCase:
    """One labelled case in MedSAM2's training format."""

    name: str
    imgs: np.ndarray
    """uint8 [slices or frames, rows, columns], already windowed."""
    gts: np.ndarray
    """Integer labels [slices, rows, columns]; 0 is background, each other value one object."""
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    modality: str = "CT"
    video: bool = False
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def labels(self) -> list[int]:
        """The object labels present, ascending."""
        return [int(v) for v in np.unique(self.gts) if v != 0]


def check_case(case: TrainingCase, *, where: str = "") -> None:
    """Raise ``InvalidInput`` naming the problem for a case that cannot be evaluated or trained on."""
    name = where or case.name
    if case.imgs.ndim != 3:
        raise InvalidInput(f"{name}: image has shape {case.imgs.shape}, expected [slices, rows, columns]")
    if case.gts.shape != case.imgs.shape:
        raise InvalidInput(f"{name}: label shape {case.gts.shape} does not match image shape {case.imgs.shape}")
    if case.imgs.dtype != np.uint8:
        raise InvalidInput(f"{name}: 'imgs' must be uint8 (windowed to 0..255), got {case.imgs.dtype}")
    if not np.issubdtype(case.gts.dtype, np.integer) and case.gts.dtype != np.bool_:
        raise InvalidInput(f"{name}: labels must be integers, got {case.gts.dtype}")
    if not case.gts.any():
        raise InvalidInput(f"{name}: the label volume is empty (no voxel > 0): nothing to evaluate or learn")
    if len(case.spacing) != 3 or not all(s > 0 for s in case.spacing):
        raise InvalidInput(f"{name}: spacing must be three positive numbers (z, y, x), got {case.spacing}")


def read_training_case(path: Path) -> TrainingCase:
    """Read one npz case; the label array may be called ``gts`` (MedSAM2) or ``segs``."""
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"case not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise InvalidInput(f"cannot read {path.name} as .npz: {exc}") from exc
    label_key = "gts" if "gts" in arrays else "segs" if "segs" in arrays else None
    if "imgs" not in arrays or label_key is None:
        raise InvalidInput(
            f"{path.name} is not a MedSAM2 training case: it needs 'imgs' and 'gts', found {sorted(arrays)}"
        )
    spacing = np.asarray(arrays.get("spacing", np.ones(3)), np.float64).reshape(-1)
    modality = str(arrays["modality"]) if "modality" in arrays else "CT"
    video = bool(arrays["video"]) if "video" in arrays else modality.upper() in VIDEO_MODALITIES
    provenance = json.loads(str(arrays["provenance"])) if "provenance" in arrays else {}
    case = TrainingCase(
        path.name.removesuffix(".npz"),
        arrays["imgs"],
        arrays[label_key],
        tuple(float(s) for s in spacing) if spacing.shape == (3,) else tuple(spacing),
        modality,
        video,
        provenance,
    )
    return case


def write_training_case(folder: Path, case: TrainingCase) -> Path:
    """Write ``case`` as ``folder/<name>.npz`` atomically (a crash never leaves half a file)."""
    check_case(case)
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputNotWritable(f"cannot create {folder}: {exc.strerror or exc}") from exc
    path = folder / f"{case.name}.npz"
    labels = case.gts.astype(np.uint8 if case.gts.max() < 256 else np.uint16)
    return write_atomic(
        path,
        lambda tmp: np.savez_compressed(
            tmp,
            imgs=case.imgs,
            gts=labels,
            spacing=np.asarray(case.spacing, np.float64),
            modality=np.str_(case.modality),
            video=np.bool_(case.video),
            provenance=np.str_(json.dumps(case.provenance, sort_keys=True)),
        ),
    )


def list_cases(folder: Path) -> list[Path]:
    """The npz cases of a folder, sorted by name (hidden partial files skipped)."""
    return sorted(p for p in Path(folder).glob("*.npz") if not p.name.startswith("."))
