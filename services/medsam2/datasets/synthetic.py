"""A project-made labelled dataset: lesion-like blobs in CT-like volumes, and short videos of a moving shape.

Everything is drawn from one seed, so the same command writes the same files. The volumes are already
windowed uint8 (as MedSAM2's npz training data are): a soft-tissue body ellipse with smooth texture and
noise, a bright rim, and one or two ellipsoidal lesions whose intensity differs from the body. The videos are
an ultrasound-like speckled sector with a disc that moves and changes size from frame to frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from medsam2.datasets.training_npz import TrainingCase, write_training_case


@dataclass(frozen=True, slots=True)
class SyntheticOptions:
    """Sizes of the synthetic dataset."""

    volumes: int = 8
    videos: int = 2
    slices: int = 24
    size: int = 96
    frames: int = 16
    seed: int = 0


def synthetic_volume(rng: np.random.Generator, *, slices: int, size: int, name: str) -> TrainingCase:
    """One CT-like volume with one or two ellipsoidal lesions (labels 1, 2)."""
    z, y, x = np.meshgrid(np.arange(slices), np.arange(size), np.arange(size), indexing="ij")
    c = (size - 1) / 2
    body = ((x - c) / (0.45 * size)) ** 2 + ((y - c) / (0.36 * size)) ** 2 <= 1.0
    texture = ndimage.gaussian_filter(rng.normal(0, 1, (slices, size, size)), sigma=(1, 3, 3)) * 40
    img = np.where(body, 110.0 + texture, 5.0)
    rim = body & ~ndimage.binary_erosion(body, iterations=2)
    img[rim] = 200.0
    labels = np.zeros((slices, size, size), np.uint8)
    for label in range(1, int(rng.integers(1, 3)) + 1):
        z_high = min(5.0, slices / 4)
        radii = rng.uniform([min(2.5, z_high), 0.07 * size, 0.07 * size], [z_high, 0.13 * size, 0.13 * size])
        centre = (
            rng.uniform(radii[0] + 1, slices - radii[0] - 1),
            c + rng.uniform(-0.18, 0.18) * size,
            c + rng.uniform(-0.25, 0.25) * size,
        )
        inside = sum(((g - m) / r) ** 2 for g, m, r in zip((z, y, x), centre, radii, strict=False)) <= 1.0
        inside &= labels == 0
        labels[inside] = label
        brightness = rng.choice([-55.0, 60.0])
        img[inside] += brightness
    img += rng.normal(0, 6, img.shape)
    return TrainingCase(
        name,
        np.clip(img, 0, 255).astype(np.uint8),
        labels,
        spacing=(2.5, 0.8, 0.8),
        modality="CT",
        video=False,
        provenance={"source": "medsam2 dataset synthetic"},
    )


def synthetic_video(rng: np.random.Generator, *, frames: int, size: int, name: str) -> TrainingCase:
    """An ultrasound-like clip: speckle in a sector, one disc moving along a line and pulsing (label 1)."""
    y, x = np.mgrid[0:size, 0:size]
    angle = np.arctan2(x - size / 2, y + size * 0.1)
    sector = (np.abs(angle) < 0.6) & (np.hypot(x - size / 2, y + size * 0.1) < size * 1.05)
    start = rng.uniform([0.35 * size, 0.3 * size], [0.5 * size, 0.45 * size])
    velocity = rng.uniform(-0.012, 0.012, 2) * size
    imgs = np.zeros((frames, size, size), np.float64)
    labels = np.zeros((frames, size, size), np.uint8)
    for t in range(frames):
        cy, cx = start + velocity * t
        r = 0.12 * size * (1 + 0.15 * np.sin(2 * np.pi * t / max(frames, 2)))
        disc = (y - cy) ** 2 + (x - cx) ** 2 <= r * r
        speckle = rng.rayleigh(40, (size, size))
        frame = np.where(sector, 60 + speckle, 0.0)
        frame[disc & sector] = 15 + rng.rayleigh(8, int((disc & sector).sum()))
        imgs[t] = ndimage.gaussian_filter(frame, 0.8)
        labels[t][disc & sector] = 1
    return TrainingCase(
        name,
        np.clip(imgs, 0, 255).astype(np.uint8),
        labels,
        spacing=(1.0, 0.3, 0.3),
        modality="US",
        video=True,
        provenance={"source": "medsam2 dataset synthetic"},
    )


def write_synthetic_dataset(out: Path, options: SyntheticOptions = SyntheticOptions()) -> list[Path]:
    """Write ``options.volumes`` CT-like cases and ``options.videos`` clips as npz files into ``out``."""
    rng = np.random.default_rng(options.seed)
    written = []
    for i in range(options.volumes):
        case = synthetic_volume(rng, slices=options.slices, size=options.size, name=f"ct_{i:03d}")
        written.append(write_training_case(out, case))
    for i in range(options.videos):
        case = synthetic_video(rng, frames=options.frames, size=options.size, name=f"us_{i:03d}")
        written.append(write_training_case(out, case))
    return written
