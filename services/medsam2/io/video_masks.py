"""Per-frame PNG masks as MedSAM2's video script reads and writes them (the DAVIS / SA-V layouts).

- DAVIS: one indexed PNG per frame, ``DIR/<frame name>.png``, whose pixel values are object ids (0 is
  background), with a palette (the input's own, else DAVIS's).
- per object (SA-V, the script's ``--per_obj_png_file``): ``DIR/<object id, 3 digits>/<frame name>.png``, each
  a 0/1 mask.

The script takes the first frame's masks as prompts and writes every frame's masks in the same layout. Frame
names are the frame files' names without suffix; a video file's frames are numbered ``00000``, ``00001``, ...
Where objects overlap in a DAVIS PNG, the smaller id wins, as the script's ``put_per_obj_mask`` writes them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from medsam2.errors import InvalidInput, NotFound, OutputNotWritable

MAX_MASK_PNG_BYTES = 64 * 2**20
"""A mask PNG larger than this is refused before it is decoded."""
MAX_OBJECTS = 255
"""Object ids of a DAVIS PNG are its 8-bit pixel values; per-object folders are bounded the same."""


@dataclass(frozen=True, slots=True)
class FirstFrameMasks:
    """The prompts of a mask folder: each object's boolean mask on frame 0, and the layout to write back."""

    masks: dict[int, np.ndarray]
    per_object: bool
    palette: list[int] | None


def davis_palette() -> list[int]:
    """The 256-colour palette of DAVIS 2017 (the PASCAL VOC colour map): index bits spread over R, G and B."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette += [r, g, b]
    return palette


def frame_names(names: Sequence[str], count: int) -> list[str]:
    """The frames' names: a frame folder's own, else ``00000``, ``00001``, ... (a video file's frames)."""
    if names:
        return list(names)
    return [f"{i:05d}" for i in range(count)]


def read_first_frame_masks(folder: Path, first_frame: str, shape: tuple[int, int]) -> FirstFrameMasks:
    """Read frame ``first_frame``'s masks from ``folder`` (DAVIS PNG or per-object folders) at ``shape`` (rows, cols).

    Raises
    ------
    NotFound
        If the folder, or the first frame's PNG in it, does not exist.
    InvalidInput
        If a PNG is unreadable, too large, of another size than the frames, or holds no object.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise NotFound(f"mask folder {folder} does not exist")
    davis = folder / f"{first_frame}.png"
    if davis.is_file():
        labels, palette = _read_png(davis, shape)
        ids = [int(i) for i in np.unique(labels) if i > 0]
        if not ids:
            raise InvalidInput(f"{davis}: the first frame's mask has no object (every pixel is 0)")
        return FirstFrameMasks({i: labels == i for i in ids}, per_object=False, palette=palette)
    objects = sorted(p for p in folder.iterdir() if p.is_dir() and p.name.isdigit())
    if not objects:
        raise NotFound(
            f"{folder} has neither {davis.name} (a DAVIS PNG of the first frame) nor per-object folders "
            f"(001/{davis.name}, 002/{davis.name}, ...)"
        )
    if len(objects) > MAX_OBJECTS:
        raise InvalidInput(f"{folder} has {len(objects)} object folders; at most {MAX_OBJECTS} are supported")
    masks: dict[int, np.ndarray] = {}
    for obj_folder in objects:
        obj_id = int(obj_folder.name)
        if not 1 <= obj_id <= 2**31 - 1:
            raise InvalidInput(f"{obj_folder}: object ids start at 1, got {obj_folder.name}")
        path = obj_folder / f"{first_frame}.png"
        if not path.is_file():
            continue  # the script's first-frame rule: an object without a first-frame mask is not tracked
        mask = _read_png(path, shape)[0] > 0
        if mask.any():
            masks[obj_id] = mask
    if not masks:
        raise InvalidInput(f"{folder}: no object folder has a non-empty {davis.name}")
    return FirstFrameMasks(masks, per_object=True, palette=None)


def _read_png(path: Path, shape: tuple[int, int]) -> tuple[np.ndarray, list[int] | None]:
    if path.stat().st_size > MAX_MASK_PNG_BYTES:
        raise InvalidInput(f"{path}: larger than {MAX_MASK_PNG_BYTES // 2**20} MiB, too large for a mask")
    try:
        with Image.open(path) as image:
            width, height = image.size
            if (height, width) != tuple(shape):
                raise InvalidInput(
                    f"{path}: the mask is {width}x{height} pixels but the frames are {shape[1]}x{shape[0]}"
                )
            palette = image.getpalette() if image.mode == "P" else None
            if image.mode in ("1", "L", "P"):
                array = np.asarray(image)
            elif image.mode in ("I", "I;16"):
                array = np.asarray(image)
                if array.max(initial=0) > MAX_OBJECTS:
                    raise InvalidInput(f"{path}: object ids above {MAX_OBJECTS} do not fit a DAVIS PNG")
            else:  # colour or with alpha: any non-black pixel is the object, as a single-object mask
                array = (np.asarray(image.convert("L")) > 0).astype(np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise InvalidInput(f"cannot read {path} as a PNG mask: {exc}") from None
    return np.asarray(array, np.uint8), palette


def write_frame_masks(
    folder: Path,
    masks: Mapping[int, np.ndarray],
    names: Sequence[str],
    *,
    per_object: bool,
    palette: list[int] | None = None,
) -> list[Path]:
    """Write every frame's masks into ``folder`` (created; it must not exist or be empty), atomically.

    ``masks`` are boolean [frames, rows, columns] per object; ``names`` name the frames. The files appear together:
    they are written into a sibling folder that is renamed at the end, so a failure leaves nothing behind.

    Raises
    ------
    OutputNotWritable
        If ``folder`` exists and is not an empty folder, or cannot be created.
    InvalidInput
        If an object id does not fit the layout.
    """
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise OutputNotWritable(f"--out-masks {folder}: exists and is not an empty folder")
    if not per_object and any(not 1 <= i <= MAX_OBJECTS for i in masks):
        raise InvalidInput(f"a DAVIS PNG holds object ids 1..{MAX_OBJECTS}, got {sorted(masks)}")
    tmp = folder.with_name(f".{folder.name}.partial-{os.getpid()}")
    try:
        tmp.mkdir(parents=True)
    except OSError as exc:
        raise OutputNotWritable(f"--out-masks {folder}: cannot create it ({exc.strerror})") from None
    colours = palette or davis_palette()
    try:
        for frame, name in enumerate(names):
            if per_object:
                for obj_id, mask in masks.items():
                    (tmp / f"{obj_id:03d}").mkdir(exist_ok=True)
                    image = Image.fromarray(mask[frame].astype(np.uint8))
                    image.putpalette(colours)
                    image.save(tmp / f"{obj_id:03d}" / f"{name}.png")
            else:
                labels = np.zeros(next(iter(masks.values())).shape[1:], np.uint8)
                for obj_id in sorted(masks, reverse=True):  # the smaller id is written last and wins
                    labels[masks[obj_id][frame]] = obj_id
                image = Image.fromarray(labels)
                image.putpalette(colours)
                image.save(tmp / f"{name}.png")
        if folder.exists():
            folder.rmdir()
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return sorted(folder.rglob("*.png"))
