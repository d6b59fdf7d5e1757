"""Video in: mp4 and avi (encoded here by OpenCV's FFmpeg), png/jpg frame folders, and frame order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medsam2.errors import InvalidInput, NotFound
from medsam2.imaging.windowing import to_uint8
from medsam2.io.errors import IrregularStack
from medsam2.io.video import read_frame_folder
from medsam2.io.volumes import read_volume

FRAMES, HEIGHT, WIDTH = 12, 96, 128


def moving_disc() -> np.ndarray:
    """RGB frames [frames, rows, columns, 3]: a coloured disc moving right over a grey gradient."""
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH]
    frames = []
    for t in range(FRAMES):
        frame = np.repeat((cols * 255 // WIDTH).astype(np.uint8)[..., None], 3, axis=-1)
        disc = (rows - 48) ** 2 + (cols - 20 - 7 * t) ** 2 <= 15**2
        frame[disc] = (220, 60, 40)
        frames.append(frame)
    return np.stack(frames)


def write_video(path: Path, frames_rgb: np.ndarray, fourcc: str) -> Path:
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10.0, (WIDTH, HEIGHT))
    assert writer.isOpened(), f"OpenCV cannot encode {fourcc}"
    for frame in frames_rgb:
        writer.write(frame[..., ::-1].copy())  # OpenCV wants BGR
    writer.release()
    return path


def grey(frames_rgb: np.ndarray) -> np.ndarray:
    return np.stack([np.asarray(Image.fromarray(f).convert("L")) for f in frames_rgb])


@pytest.mark.parametrize(("suffix", "fourcc"), [(".mp4", "mp4v"), (".avi", "MJPG")])
def test_video_files_decode_every_frame_to_grey(tmp_path: Path, suffix: str, fourcc: str) -> None:
    frames = moving_disc()
    volume = read_volume(write_video(tmp_path / f"clip{suffix}", frames, fourcc))
    assert volume.source_format == "video"
    assert volume.voxels.shape == (FRAMES, HEIGHT, WIDTH) and volume.voxels.dtype == np.uint8
    assert volume.extras["fps"] == pytest.approx(10.0)
    # Lossy codecs: close to the grey frames, and the disc is where it was drawn in every frame.
    error = np.abs(volume.voxels.astype(int) - grey(frames).astype(int))
    assert error.mean() < 4
    for t in range(FRAMES):
        assert abs(int(volume.voxels[t, 48, 20 + 7 * t]) - int(grey(frames)[t, 48, 20 + 7 * t])) < 20
    assert volume.geometry is None and volume.modality is None
    np.testing.assert_array_equal(to_uint8(volume.voxels), volume.voxels)  # video preset: unchanged


def test_png_frame_folder_is_exact_and_in_natural_order(tmp_path: Path) -> None:
    frames = moving_disc()
    folder = tmp_path / "frames"
    folder.mkdir()
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"frame{t}.png")  # frame10 sorts after frame9, not after frame1
    volume = read_volume(folder)
    assert volume.source_format == "frames"
    np.testing.assert_array_equal(volume.voxels, grey(frames))


def test_jpg_frames_read_like_pillow_reads_them(tmp_path: Path) -> None:
    folder = tmp_path / "jpg"
    folder.mkdir()
    for t, frame in enumerate(moving_disc()[:3]):
        Image.fromarray(frame).save(folder / f"{t:03d}.jpg", quality=90)
    expected = np.stack([np.asarray(Image.open(folder / f"{t:03d}.jpg").convert("L")) for t in range(3)])
    np.testing.assert_array_equal(read_frame_folder(folder).voxels, expected)


def test_frames_of_different_sizes_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.new("L", (32, 16)).save(folder / "a1.png")
    Image.new("L", (32, 20)).save(folder / "a2.png")
    with pytest.raises(IrregularStack, match=r"frame a2\.png is 32x20 pixels but a1\.png is 32x16"):
        read_volume(folder)


def test_a_file_that_is_not_a_video(tmp_path: Path) -> None:
    path = tmp_path / "broken.mp4"
    path.write_bytes(b"not a video at all" * 100)
    with pytest.raises(InvalidInput, match=r"broken\.mp4"):
        read_volume(path)
    with pytest.raises(NotFound, match="video not found"):
        from medsam2.io.video import read_video_file

        read_video_file(tmp_path / "missing.avi")


def test_colour_frames_become_grey_exactly_as_pillow_converts_them() -> None:
    from medsam2.io.dicom_pixels import to_grey_uint8

    rgb = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    np.testing.assert_array_equal(to_grey_uint8(rgb), grey(rgb))


def test_colour_frames_are_kept_as_rgb_for_the_model(tmp_path: Path) -> None:
    frames = moving_disc()
    folder = tmp_path / "colour"
    folder.mkdir()
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{t:05d}.png")
    volume = read_volume(folder)
    np.testing.assert_array_equal(volume.rgb, frames)  # as sam2's loader reads them: convert("RGB")
    np.testing.assert_array_equal(volume.voxels, grey(frames))  # display, SEG, measurements
    assert volume.frame_names == tuple(f"{t:05d}" for t in range(FRAMES))
    video = read_volume(write_video(tmp_path / "clip.mp4", frames, "mp4v"))
    assert video.rgb is not None and video.rgb.shape == frames.shape
    # OpenCV decodes BGR: the disc must come back red, not blue.
    red, _, blue = (int(v) for v in video.rgb[3, 48, 20 + 21])
    assert red > 150 and blue < 100


def test_grey_frames_stay_one_channel(tmp_path: Path) -> None:
    folder = tmp_path / "grey"
    folder.mkdir()
    frames = grey(moving_disc())
    for t, frame in enumerate(frames):
        Image.fromarray(np.repeat(frame[..., None], 3, axis=-1)).save(folder / f"{t:03d}.png")  # RGB, equal channels
    volume = read_volume(folder)
    assert volume.rgb is None
    np.testing.assert_array_equal(volume.voxels, frames)


@pytest.mark.parametrize("name", ["examples_ybr_color.dcm", "SC_rgb_rle_2frame.dcm"])
def test_colour_dicom_cine_reaches_the_model_as_rgb(name: str) -> None:
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file(name))
    assert int(ds.SamplesPerPixel) == 3
    volume = read_volume(Path(get_testdata_file(name)))
    assert volume.source_format == "dicom-cine"
    rgb = ds.pixel_array  # pydicom converts YBR_FULL_422 to RGB; RGB stays RGB
    np.testing.assert_array_equal(volume.rgb, rgb)
    np.testing.assert_array_equal(volume.voxels, grey(rgb))
