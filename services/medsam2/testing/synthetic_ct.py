"""Synthetic CT series written with pydicom, for tests, benchmarks and demos.

No multi-hundred-slice CT ships with any package reachable here, so scale tests
make one: a body ellipsoid with a spine-like bone rod and a spherical lesion,
evaluated in patient coordinates so that the stated geometry (orientation,
anisotropic spacing, shear) really describes the voxels.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from medsam2.io.geometry import Geometry

LESION_HU = 120.0
BODY_HU = 40.0
BONE_HU = 700.0
AIR_HU = -1000.0


@dataclass(frozen=True, slots=True)
class SyntheticSeries:
    """What was written: file paths, UIDs in slice order, the geometry, and the lesion."""

    folder: Path
    paths: tuple[Path, ...]
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    sop_uids: tuple[str, ...]
    """SOPInstanceUID of each slice, in position order along the normal."""
    geometry: Geometry
    lesion_centre: tuple[float, float, float]
    """Lesion centre in LPS mm."""
    lesion_radius_mm: float

    def lesion_voxel(self) -> tuple[int, int, int]:
        """Nearest (slice, row, column) to the lesion centre."""
        inverse = np.linalg.inv(self.geometry.affine_lps())
        col, row, k = (inverse @ np.append(self.lesion_centre, 1.0))[:3]
        return int(round(k)), int(round(row)), int(round(col))


def rotation_about_x(degrees: float) -> np.ndarray:
    """ImageOrientationPatient for axial slices tilted about the patient's left-right axis."""
    a = np.deg2rad(degrees)
    return np.array([1.0, 0.0, 0.0, 0.0, np.cos(a), -np.sin(a)])


def write_synthetic_ct(
    folder: Path,
    *,
    slices: int = 100,
    size: int = 512,
    pixel_spacing: tuple[float, float] = (0.7, 0.8),
    slice_spacing: float = 2.5,
    orientation: np.ndarray | None = None,
    shear_mm: tuple[float, float] = (0.0, 0.0),
    lesion_radius_mm: float = 15.0,
    skip_slices: tuple[int, ...] = (),
    seed: int = 0,
    study_uid: str | None = None,
    series_uid: str | None = None,
) -> SyntheticSeries:
    """Write a CT series (uint16 stored, intercept -1024) into ``folder`` under shuffled file names."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    iop = rotation_about_x(20.0) if orientation is None else np.asarray(orientation, float)
    row_cos, col_cos = iop[:3], iop[3:]
    normal = np.cross(row_cos, col_cos)
    step = normal * slice_spacing + row_cos * shear_mm[0] + col_cos * shear_mm[1]
    dy, dx = pixel_spacing
    # Centre the stack on the patient origin.
    centre_offset = row_cos * dx * (size - 1) / 2 + col_cos * dy * (size - 1) / 2 + step * (slices - 1) / 2
    origin = -centre_offset
    geometry = Geometry.from_dicom(origin, iop, np.array(pixel_spacing), step)
    lesion = origin + step * (slices * 0.55) + row_cos * dx * size * 0.6 + col_cos * dy * size * 0.45
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_uid = generate_uid()
    rng = random.Random(seed)
    names = [f"{rng.getrandbits(40):010x}.dcm" for _ in range(slices)]
    order = list(range(slices))
    rng.shuffle(order)  # instance numbers follow the shuffle: readers must sort by position
    rows = np.arange(size, dtype=np.float32)[:, None, None] * dy * col_cos.astype(np.float32)
    cols = np.arange(size, dtype=np.float32)[None, :, None] * dx * row_cos.astype(np.float32)
    plane = rows + cols  # [rows, cols, 3] offsets from the slice origin
    paths, uids = [], []
    for k in range(slices):
        if k in skip_slices:
            continue
        position = origin + k * step
        hu = _phantom(plane + position.astype(np.float32), lesion, lesion_radius_mm)
        ds = _slice_dataset(study_uid, series_uid, frame_uid, position, iop, pixel_spacing, slice_spacing, order[k])
        ds.PixelData = np.clip(hu + 1024, 0, 4095).astype(np.uint16).tobytes()
        ds.Rows, ds.Columns = size, size
        path = folder / names[k]
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
        uids.append(str(ds.SOPInstanceUID))
    return SyntheticSeries(
        folder,
        tuple(paths),
        study_uid,
        series_uid,
        frame_uid,
        tuple(uids),
        geometry,
        (float(lesion[0]), float(lesion[1]), float(lesion[2])),
        lesion_radius_mm,
    )


def _phantom(points: np.ndarray, lesion: np.ndarray, radius: float) -> np.ndarray:
    x, y, z = points[..., 0], points[..., 1], points[..., 2]
    hu = np.full(x.shape, AIR_HU, np.float32)
    body = (x / 160.0) ** 2 + (y / 110.0) ** 2 <= 1.0
    hu[body] = BODY_HU + 10.0 * np.sin(z[body] / 7.0)
    spine = (x / 18.0) ** 2 + ((y - 70.0) / 18.0) ** 2 <= 1.0
    hu[spine] = BONE_HU
    in_lesion = np.sum((points - lesion.astype(np.float32)) ** 2, axis=-1) <= radius**2
    hu[in_lesion] = LESION_HU
    return np.round(hu)


def _slice_dataset(
    study_uid: str,
    series_uid: str,
    frame_uid: str,
    position: np.ndarray,
    iop: np.ndarray,
    pixel_spacing: tuple[float, float],
    thickness: float,
    instance: int,
) -> Dataset:
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Synthetic^Phantom", "SYN0001", "19700101", "O"
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "120000", "1", "SYN1"
    ds.ReferringPhysicianName = ""
    ds.SeriesDate, ds.SeriesTime = "20260101", "120000"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 1, instance + 1
    ds.SeriesDescription = "synthetic phantom"
    ds.Manufacturer = "medsam2-serving synthetic"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.8f}" for v in iop]
    ds.PixelSpacing = [f"{v:g}" for v in pixel_spacing]
    ds.SliceThickness = f"{thickness:g}"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
    ds.WindowCenter, ds.WindowWidth = "40", "400"
    return ds
