"""Training data: checked cases, the dataset's hash, clip sampling and augmentation.

A clip is ``clip_length`` consecutive slices (or frames) that starts on a slice where the object is present,
so the first frame can carry the box prompt; volumes are sampled in both directions (a reversed clip is
the backward half of MedSAM2's 3D protocol), videos forward only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from medsam2.datasets.training_npz import TrainingCase, check_case, list_cases, read_training_case
from medsam2.errors import InvalidInput, NotFound
from medsam2.evaluation.prompts import box_of, jitter_box


@dataclass(frozen=True, slots=True)
class Clip:
    """One training example: uint8 frames, the object's masks on them, and the box on the first frame."""

    case: int
    frames: tuple[int, ...]
    """Slice indices in the case, in tracking order."""
    images: np.ndarray
    """uint8 [T, rows, columns]."""
    masks: np.ndarray
    """bool [T, rows, columns]."""
    box: tuple[float, float, float, float]
    """x0, y0, x1, y1 on the first frame, in pixels of the (augmented) slice."""


def load_dataset(folder: Path, *, clip_length: int) -> list[TrainingCase]:
    """Read and check every case of ``folder``: all problems are reported before training starts."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotFound(f"dataset folder not found: {folder}")
    paths = list_cases(folder)
    if not paths:
        raise InvalidInput(f"{folder} holds no .npz cases (MedSAM2's training format: imgs, gts, spacing)")
    cases = []
    for path in paths:
        case = read_training_case(path)
        check_case(case, where=path.name)
        if case.imgs.shape[0] < clip_length:
            raise InvalidInput(f"{path.name}: {case.imgs.shape[0]} slices, fewer than one clip of {clip_length}")
        cases.append(case)
    return cases


def dataset_sha256(folder: Path) -> str:
    """sha256 over the names and bytes of the dataset's npz files, in name order."""
    digest = hashlib.sha256()
    for path in list_cases(folder):
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def sample_clip(
    cases: list[TrainingCase], rng: np.random.Generator, *, clip_length: int, jitter_px: float, augment: bool
) -> Clip:
    """A random clip of a random object, with a jittered ground-truth box and (optionally) augmentation."""
    index = int(rng.integers(len(cases)))
    case = cases[index]
    label = int(rng.choice(case.labels))
    present = np.flatnonzero((case.gts == label).any(axis=(1, 2)))
    start = int(rng.choice(present))
    n = case.imgs.shape[0]
    backward = not case.video and bool(rng.integers(2))
    if backward:
        start = max(start, clip_length - 1)
        frames = tuple(range(start, start - clip_length, -1))
    else:
        start = min(start, n - clip_length)
        frames = tuple(range(start, start + clip_length))
    images = case.imgs[list(frames)]
    masks = case.gts[list(frames)] == label
    if not masks[0].any():  # the start was moved to fit the clip: begin where the object is
        first = int(np.flatnonzero(masks.any(axis=(1, 2)))[0])
        images, masks = np.roll(images, -first, axis=0), np.roll(masks, -first, axis=0)
        frames = frames[first:] + frames[:first]
        images, masks, frames = (
            images[: clip_length - first],
            masks[: clip_length - first],
            frames[: clip_length - first],
        )
    if augment:
        images, masks = augment_clip(images, masks, rng)
        if not masks[0].any():  # an affine moved the object out of the first frame: keep the plain clip
            images, masks = case.imgs[list(frames)], case.gts[list(frames)] == label
    box = jitter_box(box_of(masks[0]), jitter_px, rng, masks.shape[1], masks.shape[2])
    return Clip(index, frames, images, masks, (box.x0, box.y0, box.x1, box.y1))


def augment_clip(images: np.ndarray, masks: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The same flips, affine transform and intensity jitter on every frame of the clip."""
    images, masks = images.astype(np.float32), masks.copy()
    if rng.random() < 0.5:
        images, masks = images[:, :, ::-1], masks[:, :, ::-1]
    if rng.random() < 0.5:
        images, masks = images[:, ::-1], masks[:, ::-1]
    angle = np.deg2rad(rng.uniform(-15, 15))
    scale = rng.uniform(0.9, 1.1)
    shift = rng.uniform(-0.05, 0.05, 2) * np.array(images.shape[1:])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) / scale
    centre = (np.array(images.shape[1:]) - 1) / 2
    offset = centre - rotation @ (centre + shift)
    images = np.stack([ndimage.affine_transform(f, rotation, offset, order=1, mode="nearest") for f in images])
    masks = np.stack([ndimage.affine_transform(m.astype(np.uint8), rotation, offset, order=0) > 0 for m in masks])
    gamma = rng.uniform(0.8, 1.25)
    contrast, brightness = rng.uniform(0.9, 1.1), rng.uniform(-10, 10)
    images = 255.0 * (np.clip(images, 0, 255) / 255.0) ** gamma
    images = (images - 127.5) * contrast + 127.5 + brightness
    return np.clip(images, 0, 255).astype(np.uint8), masks
