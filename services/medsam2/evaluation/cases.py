"""Labelled cases from a dataset path: MedSAM2 npz files, NIfTI image/label pairs, or DICOM series with a SEG.

- npz: one file, or a folder of ``*.npz`` (``imgs``, ``gts``, ``spacing``; see ``datasets.training_npz``).
- NIfTI pairs: a folder with ``imagesTr``/``labelsTr`` (nnU-Net layout) or ``images``/``labels``; an image
  ``NAME_0000.nii.gz`` or ``NAME.nii.gz`` pairs with the label ``NAME.nii.gz``.
- DICOM: a folder whose sub-folders each hold one case: an image series and a SEG object that references it.

Images that are not uint8 are windowed as ``medsam2 segment`` would (``--preset``, default by modality).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medsam2.datasets.training_npz import VIDEO_MODALITIES, TrainingCase, check_case, list_cases, read_training_case
from medsam2.errors import InvalidInput, NotFound
from medsam2.imaging.windowing import Preset, to_uint8
from medsam2.io.volumes import NIFTI_SUFFIXES, read_volume

NIFTI_LAYOUTS = (("imagesTr", "labelsTr"), ("images", "labels"))


@dataclass(frozen=True, slots=True)
class CaseSource:
    """A case not yet read: its name and how to load it."""

    name: str
    load: Callable[[], TrainingCase]


def find_cases(dataset: Path, *, preset: Preset | str = Preset.AUTO) -> list[CaseSource]:
    """Every case of ``dataset``, in name order; raises ``NotFound``/``InvalidInput`` for an unknown layout."""
    dataset = Path(dataset)
    if dataset.is_file() and dataset.name.endswith(".npz"):
        return [CaseSource(dataset.stem, lambda: read_training_case(dataset))]
    if not dataset.is_dir():
        raise NotFound(f"dataset not found: {dataset}")
    npz = list_cases(dataset)
    if npz:
        return [CaseSource(p.stem, lambda p=p: read_training_case(p)) for p in npz]
    for images, labels in NIFTI_LAYOUTS:
        if (dataset / images).is_dir() and (dataset / labels).is_dir():
            return _nifti_pairs(dataset / images, dataset / labels, preset)
    dicom = [d for d in sorted(dataset.iterdir()) if d.is_dir() and _seg_file(d) is not None]
    if dicom:
        return [CaseSource(d.name, lambda d=d: _dicom_case(d, preset)) for d in dicom]
    raise InvalidInput(
        f"{dataset} is not a dataset: expected *.npz files, imagesTr/labelsTr (or images/labels) "
        "with NIfTI pairs, or one folder per case with a DICOM series and its SEG"
    )


def load_case(source: CaseSource) -> TrainingCase:
    """Read and check one case."""
    case = source.load()
    check_case(case, where=source.name)
    return case


def _nifti_stem(path: Path) -> str:
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _nifti_pairs(images: Path, labels: Path, preset: Preset | str) -> list[CaseSource]:
    label_files = {_nifti_stem(p): p for p in labels.iterdir() if p.name.endswith(NIFTI_SUFFIXES)}
    out = []
    for image in sorted(p for p in images.iterdir() if p.name.endswith(NIFTI_SUFFIXES)):
        stem = _nifti_stem(image)
        name = stem.removesuffix("_0000")
        label = label_files.get(name) or label_files.get(stem)
        if label is None:
            raise InvalidInput(f"image {image.name} has no label file {name}.nii.gz in {labels}")
        out.append(CaseSource(name, lambda i=image, l=label, n=name: _nifti_case(n, i, l, preset)))  # noqa: E741
    if not out:
        raise InvalidInput(f"{images} holds no NIfTI images")
    return out


def _nifti_case(name: str, image: Path, label: Path, preset: Preset | str) -> TrainingCase:
    volume = read_volume(image)
    labels = read_volume(label).voxels
    if labels.shape != volume.voxels.shape:
        raise InvalidInput(f"{name}: label shape {labels.shape} does not match image shape {volume.voxels.shape}")
    return TrainingCase(
        name,
        to_uint8(volume.voxels, preset, modality=volume.modality),
        np.rint(labels).astype(np.int32),
        volume.spacing,
        volume.modality or "CT",
    )


def _seg_file(folder: Path) -> Path | None:
    import pydicom

    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality"])
        except Exception:
            continue
        if str(ds.get("Modality", "")) == "SEG":
            return path
    return None


def _dicom_case(folder: Path, preset: Preset | str) -> TrainingCase:
    import highdicom as hd

    seg_path = _seg_file(folder)
    seg = hd.seg.segread(seg_path)
    try:
        series_uid = str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID)
    except (AttributeError, IndexError) as exc:
        raise InvalidInput(f"{folder.name}: the SEG {seg_path.name} references no series") from exc
    volume = read_volume(folder, series_uid)
    if volume.dicom is None:
        raise InvalidInput(f"{folder.name}: the referenced series {series_uid} was not read as DICOM")
    numbers = [int(s.SegmentNumber) for s in seg.SegmentSequence]
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=list(volume.dicom.slice_uids),
        segment_numbers=numbers,
        assert_missing_frames_are_empty=True,
    )
    labels = np.zeros(volume.voxels.shape, np.int32)
    for index, number in enumerate(numbers):
        labels[pixels[..., index] > 0] = number
    modality = volume.modality or "CT"
    return TrainingCase(
        folder.name,
        to_uint8(volume.voxels, preset, modality=modality),
        labels,
        volume.spacing,
        modality,
        video=modality.upper() in VIDEO_MODALITIES,
    )
