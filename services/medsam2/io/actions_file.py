"""Read an actions file: its JSON steps (``engine.actions``) and the mask images its mask steps name."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from medsam2.engine.actions import MaskStep, Step, parse_actions
from medsam2.errors import InvalidInput, NotFound

MAX_ACTIONS_BYTES = 16 * 2**20
"""An actions file larger than this is refused before it is parsed."""


@dataclass(frozen=True, slots=True)
class ActionsFile:
    """The steps of an actions file and, by step index, the masks its mask steps load."""

    steps: list[Step]
    masks: dict[int, np.ndarray]


def read_actions(path: Path) -> ActionsFile:
    """Parse ``path`` and load every mask it names (paths relative to its folder)."""
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"actions file {path} does not exist")
    if path.stat().st_size > MAX_ACTIONS_BYTES:
        raise InvalidInput(f"actions file {path.name} is larger than {MAX_ACTIONS_BYTES // 2**20} MiB")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise InvalidInput(f"actions file {path.name} is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise InvalidInput(
            f"actions file {path.name} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        ) from None
    steps = parse_actions(data, base_dir=path.parent)
    masks = {step.index: read_mask_image(step) for step in steps if isinstance(step, MaskStep)}
    return ActionsFile(steps, masks)


def read_mask_image(step: MaskStep) -> np.ndarray:
    """A mask step's image as a boolean [rows, columns] array: non-zero pixels are the object."""
    where = f"actions[{step.index}] (mask)"
    if not step.path.is_file():
        raise NotFound(f"{where}: mask file {step.path} does not exist")
    try:
        with Image.open(step.path) as image:
            if image.mode in ("1", "L", "P", "I", "I;16", "F"):
                array = np.asarray(image)
            else:  # colour or with alpha: any non-black pixel
                array = np.asarray(image.convert("L"))
    except (UnidentifiedImageError, OSError) as exc:
        raise InvalidInput(f"{where}: cannot read {step.path.name} as an image: {exc}") from None
    if array.ndim != 2:
        raise InvalidInput(f"{where}: {step.path.name} must be a single-channel image, got shape {array.shape}")
    return array > 0
