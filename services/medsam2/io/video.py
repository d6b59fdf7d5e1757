"""Video as a volume of frames: mp4/avi files, folders of png/jpg frames, DICOM cine loops.

Every frame becomes grey uint8 [frames, rows, columns] (with Pillow's ITU-R 601
luma weights for colour), for display, SEG objects and measurements.  Colour
frames are also kept as RGB (``Volume.rgb``): the model sees them as MedSAM2's
video script does (sam2 reads frames with ``convert("RGB")``); frames whose three
channels are equal are grey and kept once.  Frames are otherwise unchanged (the
video preset is 'none').  Video files are decoded with OpenCV
(opencv-python-headless), which bundles FFmpeg.
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
VIDEO_SOURCES = ("video", "frames", "dicom-cine")
"""``Volume.source_format`` of the readers here: these studies are videos (MedSAM2's video protocol and defaults)."""
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
            # OpenCV decodes to BGR; sam2 (decord, or Pillow on JPEG frames) sees RGB.
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB) if frame.ndim == 3 else frame)
    finally:
        capture.release()
    if not frames:
        raise InvalidInput(f"{path.name} has no decodable video frames (empty, truncated or an unknown codec)")
    return _video_volume(np.stack(frames), "video", fps=fps)


def is_video(volume: Volume) -> bool:
    """True when ``volume`` was read as a video (a video file, a frame folder or a DICOM cine loop)."""
    return volume.source_format in VIDEO_SOURCES


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
                grey = image.mode in ("1", "L", "I", "I;16", "F") or (image.mode == "LA")
                frames.append(np.asarray(image.convert("L" if grey else "RGB")))
        except (UnidentifiedImageError, OSError) as exc:
            raise InvalidInput(f"cannot read frame {path.name}: {exc}") from exc
        if frames[-1].shape[:2] != frames[0].shape[:2]:
            raise IrregularStack(
                f"{folder}: frame {path.name} is {frames[-1].shape[1]}x{frames[-1].shape[0]} pixels but "
                f"{paths[0].name} is {frames[0].shape[1]}x{frames[0].shape[0]}; all frames need one size"
            )
    if len({f.ndim for f in frames}) > 1:  # grey and colour frames mixed: colour for all, as sam2 reads them
        frames = [np.repeat(f[..., None], 3, axis=-1) if f.ndim == 2 else f for f in frames]
    volume = _video_volume(np.stack(frames), "frames")
    volume.frame_names = tuple(p.stem for p in paths)
    return volume


def cine_volume(ds: Dataset, label: str) -> Volume:
    """A DICOM multi-frame object without frame positions (ultrasound cine, endoscopy) as grey uint8 frames."""
    frames = stored_frames(ds, label)
    if frames.shape[0] < 1:
        raise CorruptDicom(f"{label} has no frames")
    row_col = _video_pixel_spacing(ds, label)
    frame_time = ds.get("FrameTime")
    fps = 1000.0 / float(frame_time) if frame_time else 0.0
    if frames.ndim == 4 and frames.dtype != np.uint8:  # rare (16-bit colour): scaled to 8 bits, as before
        frames = np.round(frames.astype(np.float32) / max(float(frames.max()), 1.0) * 255.0).astype(np.uint8)
    # pydicom returns colour (RGB or YBR_FULL/YBR_FULL_422, which it converts) as RGB.
    volume = _video_volume(frames, "dicom-cine", fps=fps, row_col=row_col)
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
    """Grey frames [N, H, W] or colour [N, H, W, 3] as a video volume: luma voxels, RGB kept when it is colour."""
    rgb = None
    if frames.ndim == 4:
        frames = np.ascontiguousarray(frames, dtype=np.uint8)
        if not (np.array_equal(frames[..., 0], frames[..., 1]) and np.array_equal(frames[..., 0], frames[..., 2])):
            rgb = frames
        frames = to_grey_uint8(frames)  # equal channels: exactly the grey value, as Pillow's convert("L")
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    extras = {"fps": np.asarray(fps, np.float64)} if fps > 0 else {}
    return Volume(frames, (1.0, *row_col), source, extras=extras, rgb=rgb)
