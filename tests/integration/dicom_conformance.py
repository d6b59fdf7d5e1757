"""Helpers for the DICOM conformance tests: run the segment pipeline in-process, check SEGs and NIfTI geometry.

The in-process run does what ``medsam2 segment`` does, in its order: read, check every requested output
(before any inference), segment, write.  One backend serves every file, so a corpus of about a hundred files
costs one model load.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medsam2.engine.prompts import Box
from medsam2.engine.protocols import ObjectPrompt, segment_volume
from medsam2.engine.tracker import Tracker
from medsam2.imaging.windowing import to_uint8
from medsam2.io.outputs import check_output, write_result
from medsam2.io.volumes import Volume, read_volume


@dataclass
class Outcome:
    """What happened to one input: the volume read, and per output either the written path or the error."""

    volume: Volume | None = None
    read_error: Exception | None = None
    written: dict[str, Path] | None = None
    refused: dict[str, Exception] | None = None


def central_box(volume: Volume) -> Box:
    """A box over the middle half of a slice (at least one pixel)."""
    rows, columns = volume.voxels.shape[1:]
    x0, y0 = columns // 4, rows // 4
    return Box(x0, y0, max(3 * columns // 4, x0 + 1), max(3 * rows // 4, y0 + 1))


def segment_in_process(source: Path, outputs: dict[str, Path], backend, series: str | None = None) -> Outcome:
    """Read ``source``, check each output, segment the middle slice, and write the outputs that passed."""
    outcome = Outcome(written={}, refused={})
    try:
        volume = read_volume(source, series)
    except Exception as exc:
        outcome.read_error = exc
        return outcome
    outcome.volume = volume
    accepted = {}
    for kind, path in outputs.items():
        try:
            check_output(path, volume)
        except Exception as exc:
            outcome.refused[kind] = exc
        else:
            accepted[kind] = path
    if not accepted:
        return outcome
    key = volume.voxels.shape[0] // 2
    slices = to_uint8(volume.voxels, "auto", None, modality=volume.modality)
    prompt = ObjectPrompt(obj_id=1, frame=key, box=central_box(volume))
    masks = _segment(backend, slices, prompt, key)
    for kind, path in accepted.items():
        write_result(path, masks, volume, model_version="conformance", display=slices)
        outcome.written[kind] = path
    return outcome


_RESULTS: dict[tuple[str, str, int], dict[int, np.ndarray]] = {}
"""Masks by (backend, input slices' digest, key slice): the corpus holds the same image in many transfer syntaxes."""


def _segment(backend, slices: np.ndarray, prompt: ObjectPrompt, key: int) -> dict[int, np.ndarray]:
    # The engine is deterministic, so identical slices and prompt give identical masks: a lossless variant of
    # a file already segmented reuses that real result instead of running the model again.
    digest = hashlib.sha256(slices.tobytes() + str(slices.shape).encode() + repr(prompt.box).encode()).hexdigest()
    cache_key = (str(id(backend)), digest, key)
    if cache_key not in _RESULTS:
        _RESULTS[cache_key] = segment_volume(Tracker(backend, slices), [prompt], (key, key))
    return {obj: mask.copy() for obj, mask in _RESULTS[cache_key].items()}


def dciodvfy_errors(path: Path) -> list[str]:
    """The 'Error' lines dicom3tools' dciodvfy reports for a file (warnings are not errors)."""
    run = subprocess.run(
        [shutil.which("dciodvfy") or "dciodvfy", str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def itk_geometry(image) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, ...]]:
    """(origin, spacing, direction 3x3, size) of a SimpleITK image, in ITK's LPS."""
    return (
        np.asarray(image.GetOrigin()),
        np.asarray(image.GetSpacing()),
        np.asarray(image.GetDirection()).reshape(3, 3),
        tuple(image.GetSize()),
    )


def assert_same_itk_geometry(nifti: Path, dicom: Path, *, compare_slice_spacing: bool) -> None:
    """Our NIfTI, read by SimpleITK, lies where SimpleITK puts the DICOM it came from."""
    import SimpleITK as sitk

    if dicom.is_dir():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(dicom)))
        expected = reader.Execute()
    else:
        expected = sitk.ReadImage(str(dicom))
    ours = sitk.ReadImage(str(nifti))
    origin, spacing, direction, size = itk_geometry(ours)
    e_origin, e_spacing, e_direction, e_size = itk_geometry(expected)
    assert size == e_size, f"{nifti.name}: size {size}, SimpleITK reads the DICOM as {e_size}"
    # Rows and columns run the same way; the slice axis may run either way (ITK orders slices by position
    # along its third axis, we along the slice normal), so the test is that the corner voxels coincide.
    np.testing.assert_allclose(direction[:, :2], e_direction[:, :2], atol=1e-4, err_msg=f"{nifti.name}: direction")
    count = 3 if compare_slice_spacing else 2
    np.testing.assert_allclose(spacing[:count], e_spacing[:count], rtol=1e-5, err_msg=f"{nifti.name}: spacing")
    if not compare_slice_spacing:
        np.testing.assert_allclose(origin, e_origin, atol=1e-3, err_msg=f"{nifti.name}: origin")
        return
    np.testing.assert_allclose(
        _corners(origin, spacing, direction, size),
        _corners(e_origin, e_spacing, e_direction, e_size),
        atol=1e-3,
        err_msg=f"{nifti.name}: corner voxels",
    )


def _corners(origin: np.ndarray, spacing: np.ndarray, direction: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """World positions (LPS) of the 8 corner voxel centres, sorted so that two orderings compare equal."""
    corners = np.array([[i, j, k] for i in (0, size[0] - 1) for j in (0, size[1] - 1) for k in (0, size[2] - 1)], float)
    world = origin + (corners * spacing) @ direction.T
    return world[np.lexsort(np.round(world, 3).T[::-1])]
