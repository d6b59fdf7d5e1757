"""Synthetic CT round trip: a 100-slice 512x512 tilted, anisotropic series is read, segmented by the
real engine (untrained graphs) on ten slices, written as a DICOM SEG, and read back by pydicom and
highdicom with every frame on its source slice.  Also NIfTI out at the source geometry."""

from __future__ import annotations

import json
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest

from medsam2.imaging.windowing import to_uint8
from medsam2.io.dicom_seg import SEGMENTATION_STORAGE, Algorithm, SegmentSpec, build_seg, write_seg
from medsam2.io.geometry import LPS_TO_RAS
from medsam2.io.outputs import write_result
from medsam2.io.volumes import Volume, read_volume
from medsam2.testing.synthetic_ct import LESION_HU, SyntheticSeries, write_synthetic_ct

KEY_SLICE = 55
RANGE = (50, 59)
MODEL_VERSION = "untrained-seed11-present"


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> SyntheticSeries:
    return write_synthetic_ct(tmp_path_factory.mktemp("ct") / "series", slices=100, size=512)


@pytest.fixture(scope="module")
def volume(series: SyntheticSeries) -> Volume:
    return read_volume(series.folder)


def segment(
    volume: Volume, graphs_folder: Path, key: int, box: tuple[int, int, int, int], slice_range: tuple[int, int]
) -> dict[int, np.ndarray]:
    """The real engine: ONNX Runtime over the exported graphs, MedSAM2's 3D protocol."""
    from medsam2.backends.onnxruntime_backend import OnnxRuntimeBackend
    from medsam2.engine.prompts import Box
    from medsam2.engine.protocols import ObjectPrompt, segment_volume
    from medsam2.engine.tracker import Tracker

    slices = to_uint8(volume.voxels, modality=volume.modality)
    backend = OnnxRuntimeBackend(graphs_folder, threads=2)
    try:
        tracker = Tracker(backend, slices)
        return segment_volume(tracker, [ObjectPrompt(obj_id=1, frame=key, box=Box(*box))], slice_range)
    finally:
        backend.close()


def lesion_box(series: SyntheticSeries) -> tuple[int, int, int, int]:
    _, row, col = series.lesion_voxel()
    half_rows = int(series.lesion_radius_mm / series.geometry.pixel_spacing[0]) + 3
    half_cols = int(series.lesion_radius_mm / series.geometry.pixel_spacing[1]) + 3
    return (col - half_cols, row - half_rows, col + half_cols, row + half_rows)


@pytest.fixture(scope="module")
def masks(volume: Volume, series: SyntheticSeries, graphs: dict[str, Path]) -> dict[int, np.ndarray]:
    return segment(volume, graphs["present"], KEY_SLICE, lesion_box(series), RANGE)


def test_the_series_reads_sorted_with_its_geometry(series: SyntheticSeries, volume: Volume) -> None:
    assert volume.voxels.shape == (100, 512, 512)
    assert volume.spacing == pytest.approx((2.5, 0.7, 0.8), abs=1e-6)
    assert volume.dicom is not None and volume.dicom.slice_uids == series.sop_uids  # files were shuffled
    np.testing.assert_allclose(volume.geometry.affine_lps(), series.geometry.affine_lps(), atol=1e-4)
    k, row, col = series.lesion_voxel()
    assert k == KEY_SLICE and volume.voxels[k, row, col] == LESION_HU


def test_masks_stay_in_the_slice_range(masks: dict[int, np.ndarray]) -> None:
    covered = np.flatnonzero(masks[1].any(axis=(1, 2)))
    assert covered.size > 0 and RANGE[0] <= covered.min() and covered.max() <= RANGE[1]
    assert masks[1][KEY_SLICE].any()


@pytest.fixture(scope="module")
def seg_path(masks: dict[int, np.ndarray], volume: Volume, tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = SegmentSpec(1, "liver lesion", (255, 0, 0))
    seg = build_seg(masks, volume, Algorithm(MODEL_VERSION), [spec])
    return write_seg(tmp_path_factory.mktemp("seg") / "lesion.dcm", seg, volume.dicom)


def test_pydicom_reads_the_seg_and_every_frame_lands_on_its_source_slice(
    seg_path: Path, masks: dict[int, np.ndarray], series: SyntheticSeries
) -> None:
    seg = pydicom.dcmread(seg_path)
    assert seg.SOPClassUID == SEGMENTATION_STORAGE
    assert seg.StudyInstanceUID == series.study_uid
    assert seg.FrameOfReferenceUID == series.frame_of_reference_uid
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series.series_uid
    frames = seg.pixel_array.reshape(-1, 512, 512)
    covered = [k for k in range(100) if masks[1][k].any()]
    assert len(frames) == len(covered)  # empty frames omitted, one frame per covered slice
    orientation = [
        float(v) for v in seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient
    ]
    np.testing.assert_allclose(orientation, series.geometry.image_orientation(), atol=1e-6)
    seen = []
    for index, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        k = series.sop_uids.index(uid)
        seen.append(k)
        np.testing.assert_array_equal(frames[index].astype(bool), masks[1][k])
        source = pydicom.dcmread(series.paths[k], stop_before_pixels=True)
        np.testing.assert_allclose(
            [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient],
            [float(v) for v in source.ImagePositionPatient],
            atol=1e-4,
        )
    assert sorted(seen) == covered


def test_highdicom_reads_the_seg_by_source_instance(
    seg_path: Path, masks: dict[int, np.ndarray], series: SyntheticSeries
) -> None:
    seg = hd.seg.segread(seg_path)
    description = seg.get_segment_description(1)
    assert description.segment_label == "liver lesion"
    assert description.algorithm_type == hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC
    algorithm = description.algorithm_identification[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("MedSAM2", MODEL_VERSION)
    lab = [v / 65535 for v in description.RecommendedDisplayCIELabValue]
    assert lab[0] * 100 == pytest.approx(54.3, abs=1.0) and lab[1] > 0.7  # sRGB red, D50
    covered = [k for k in range(100) if masks[1][k].any()]
    uids = [series.sop_uids[k] for k in covered]
    stacked = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1])
    np.testing.assert_array_equal(stacked[..., 0].astype(bool), masks[1][covered])
    assert {uid for _, _, uid in seg.get_source_image_uids()} == set(series.sop_uids)


def test_write_result_puts_measurements_beside_the_seg(
    masks: dict[int, np.ndarray], volume: Volume, tmp_path: Path
) -> None:
    written = write_result(tmp_path / "x.dcm", masks, volume, model_version=MODEL_VERSION)
    assert written == [tmp_path / "x.dcm", tmp_path / "x.measurements.json"]
    report = json.loads(written[1].read_text())
    entry = report["objects"][0]
    voxels = int(masks[1].sum())
    assert entry["voxels"] == voxels
    assert entry["volume_ml"] == pytest.approx(voxels * 2.5 * 0.7 * 0.8 / 1000, rel=1e-6)
    assert report["plane"] == "oblique" and report["series_uid"] == volume.dicom.series_uid
    assert RANGE[0] <= entry["recist"]["slice"] <= RANGE[1]
    assert entry["recist"]["long_axis_mm"] >= entry["recist"]["short_axis_mm"] > 0


def test_nifti_from_dicom_puts_each_voxel_where_dicom_says(
    masks: dict[int, np.ndarray], volume: Volume, series: SyntheticSeries, tmp_path: Path
) -> None:
    out = write_result(tmp_path / "mask.nii.gz", masks, volume, model_version=MODEL_VERSION)[0]
    image = nib.load(out)
    np.testing.assert_array_equal(np.asarray(image.dataobj).transpose(2, 1, 0), masks[1].astype(np.uint8))
    for k in (0, KEY_SLICE, 99):
        stated = [float(v) for v in pydicom.dcmread(series.paths[k], stop_before_pixels=True).ImagePositionPatient]
        np.testing.assert_allclose(image.affine @ [0, 0, k, 1], LPS_TO_RAS @ [*stated, 1.0], atol=1e-3)
    # Column 10, row 20 of slice 3: position + 10 column steps along the row direction + 20 rows down the column.
    ds = pydicom.dcmread(series.paths[3], stop_before_pixels=True)
    iop = np.asarray(ds.ImageOrientationPatient, float)
    dy, dx = (float(v) for v in ds.PixelSpacing)
    lps = np.asarray(ds.ImagePositionPatient, float) + 10 * dx * iop[:3] + 20 * dy * iop[3:]
    np.testing.assert_allclose(image.affine @ [10, 20, 3, 1], LPS_TO_RAS @ [*lps, 1.0], atol=1e-3)
    assert read_volume(out).geometry.affine_lps() == pytest.approx(volume.geometry.affine_lps(), abs=1e-3)


def test_nibabels_anatomical_nifti_round_trip_keeps_the_affine(tmp_path: Path) -> None:
    from nibabel.testing import data_path

    source = Path(data_path) / "anatomical.nii"
    volume = read_volume(source)
    original = nib.load(source)
    assert volume.voxels.shape == original.shape[::-1]
    np.testing.assert_array_equal(volume.voxels, np.asarray(original.dataobj).transpose(2, 1, 0))
    labels = {1: volume.voxels > np.percentile(volume.voxels, 90)}
    out = write_result(tmp_path / "brain.nii.gz", labels, volume, model_version="v")[0]
    back = nib.load(out)
    np.testing.assert_array_equal(back.affine, original.affine)
    assert int(back.header["qform_code"]) == int(original.header["qform_code"])
    assert int(back.header["sform_code"]) == int(original.header["sform_code"])
    np.testing.assert_array_equal(np.asarray(back.dataobj).transpose(2, 1, 0), labels[1].astype(np.uint8))
