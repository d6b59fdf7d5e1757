"""Video as a volume of frames: mp4/avi files, folders of png/jpg frames, DICOM cine loops.

Every frame becomes grey uint8 [frames, rows, columns], with Pillow's ITU-R 601
luma weights for colour.  The stage graphs take one channel (the image encoder
repeats it three times), so colour is dropped for now; a colour path would need
a 3-channel image encoder graph.  Frames are otherwise unchanged (the video
preset is 'none').  Video files are decoded with OpenCV (opencv-python-headless),
which bundles FFmpeg.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from medsam2.errors import InvalidInput, NotFound
from medsam2.io.dicom_pixels import stored_frames, to_grey_uint8
from medsam2.io.errors import CorruptDicom, IrregularStack
from medsam2.io.volume import Volume

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v")
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg")


def read_video_file(path: Path) -> Volume:
    """Decode every frame of an mp4/avi (or other FFmpeg-readable) file to grey uint8."""
    import cv2

    path = Path(path)
    if not path.is_file():
        raise NotFound(f"video not found: {path}")
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise InvalidInput(f"cannot open {path.name} as a video: FFmpeg (via OpenCV) does not recognise it")
        fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        frames = []
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 else frame)
    finally:
        capture.release()
    if not frames:
        raise InvalidInput(f"{path.name} has no decodable video frames (empty, truncated or an unknown codec)")
    return _video_volume(np.stack(frames), "video", fps=fps)


def is_frame_folder(folder: Path) -> bool:
    """True when every visible file in ``folder`` is a png/jpg frame."""
    files = [p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith(".")]
    return bool(files) and all(p.suffix.lower() in FRAME_SUFFIXES for p in files)


def _natural_key(path: Path) -> list[object]:
    # frame2.png before frame10.png, as people number frames.
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def read_frame_folder(folder: Path) -> Volume:
    """Read a folder of png/jpg frames in natural name order, as grey uint8."""
    from PIL import Image, UnidentifiedImageError

    folder = Path(folder)
    paths = sorted((p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES), key=_natural_key)
    if not paths:
        raise NotFound(f"{folder} has no .png or .jpg frames")
    frames = []
    for path in paths:
        try:
            with Image.open(path) as image:
                frames.append(np.asarray(image.convert("L")))
        except (UnidentifiedImageError, OSError) as exc:
            raise InvalidInput(f"cannot read frame {path.name}: {exc}") from exc
        if frames[-1].shape != frames[0].shape:
            raise IrregularStack(
                f"{folder}: frame {path.name} is {frames[-1].shape[1]}x{frames[-1].shape[0]} pixels but "
                f"{paths[0].name} is {frames[0].shape[1]}x{frames[0].shape[0]}; all frames need one size"
            )
    return _video_volume(np.stack(frames), "frames")


def cine_volume(ds: Dataset, label: str) -> Volume:
    """A DICOM multi-frame object without frame positions (ultrasound cine, endoscopy) as grey uint8 frames."""
    frames = stored_frames(ds, label)
    if frames.shape[0] < 1:
        raise CorruptDicom(f"{label} has no frames")
    row_col = _video_pixel_spacing(ds, label)
    frame_time = ds.get("FrameTime")
    fps = 1000.0 / float(frame_time) if frame_time else 0.0
    volume = _video_volume(to_grey_uint8(frames), "dicom-cine", fps=fps, row_col=row_col)
    volume.modality = str(ds.get("Modality", "")) or None
    return volume


def _video_pixel_spacing(ds: Dataset, label: str) -> tuple[float, float]:
    """A cine's PixelSpacing; 1 mm (with a warning) when it is absent, zero or unreadable, as video has no scale."""
    spacing = ds.get("PixelSpacing")
    if not spacing:
        return (1.0, 1.0)
    try:
        pair = (float(spacing[0]), float(spacing[1]))
    except (TypeError, ValueError, IndexError):
        pair = (0.0, 0.0)
    if min(pair) > 0 and all(np.isfinite(pair)):
        return pair
    log.warning("%s: PixelSpacing %s is not a positive size; using 1 mm per pixel for this video", label, pair)
    return (1.0, 1.0)


def _video_volume(
    frames: np.ndarray, source: str, fps: float = 0.0, row_col: tuple[float, float] = (1.0, 1.0)
) -> Volume:
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    extras = {"fps": np.asarray(fps, np.float64)} if fps > 0 else {}
    return Volume(frames, (1.0, *row_col), source, extras=extras)
