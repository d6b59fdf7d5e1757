"""MedSAM2's video script's inputs and outputs through ``segment`` and ``client``: frame folders or an MP4, first-frame
PNG masks (DAVIS palette, or one folder per object) and per-frame PNG masks back, with the script's masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medsam2.backends.onnxruntime_backend import OnnxRuntimeBackend
from medsam2.cli.main import main
from medsam2.io.video_masks import davis_palette
from medsam2.server.app import start_server
from medsam2.server.config import ServerSettings
from test_video_parity import MAX_DIFFERENT, compare, script_reference, touching_objects_video

IO_FRAMES = 5
"""Fewer frames than the parity test: these tests check the files and the paths, each run is a whole video."""


@pytest.fixture(scope="module")
def server(graphs: dict[str, Path]):
    settings = ServerSettings(port=0, metrics_port=0, model_repository=graphs["present"])
    running = start_server(settings, OnnxRuntimeBackend(graphs["present"], threads=2))
    yield f"127.0.0.1:{running.port}"
    running.stop(2)


@pytest.fixture(scope="module")
def colour_video(tmp_path_factory: pytest.TempPathFactory):
    """An endoscopy-like colour frame folder, its DAVIS and per-object first-frame masks."""
    root = tmp_path_factory.mktemp("video")
    frames, first = touching_objects_video(7, colour=True, frames=IO_FRAMES)
    (root / "frames").mkdir()
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(root / "frames" / f"{i:05d}.png")
    (root / "davis").mkdir()
    labels = np.zeros(frames.shape[1:3], np.uint8)
    for obj_id, mask in first.items():
        labels[mask] = obj_id
    davis = Image.fromarray(labels)
    davis.putpalette(davis_palette())
    davis.save(root / "davis" / "00000.png")
    for obj_id, mask in first.items():
        (root / "objects" / f"{obj_id:03d}").mkdir(parents=True)
        Image.fromarray(mask.astype(np.uint8)).save(root / "objects" / f"{obj_id:03d}" / "00000.png")
    return root, frames, first


def _read_davis(folder: Path, frames: int) -> np.ndarray:
    out = []
    for i in range(frames):
        with Image.open(folder / f"{i:05d}.png") as image:
            assert image.mode == "P" and image.getpalette()[:9] == davis_palette()[:9]
            out.append(np.asarray(image))
    return np.stack(out)


VIDEO_DEFAULTS = {
    "largest_component": False,
    "fill_hole_area": 0,
    "non_overlapping_objects": True,
    "binarize_memory": False,
}


@pytest.fixture(scope="module")
def segmented(colour_video, graphs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """``segment`` on the colour frame folder with the DAVIS first-frame masks: its PNG folder and summary."""
    root, _, _ = colour_video
    out = tmp_path_factory.mktemp("segment") / "masks"
    args = ["segment", str(root / "frames"), "--graphs", str(graphs["present"]), "--out-masks", str(out)]
    return out, _run_json([*args, "--mask-dir", str(root / "davis"), "--no-progress", "--json"])


def _run_json(args: list[str]) -> dict:
    import contextlib
    import io

    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(args) == 0
    return json.loads(stdout.getvalue().strip().splitlines()[-1])


def test_segment_of_a_frame_folder_with_davis_masks_matches_the_script(
    colour_video, segmented, checkpoints: dict[str, Path]
) -> None:
    root, frames, first = colour_video
    out, summary = segmented
    assert summary["postprocessing"] == VIDEO_DEFAULTS
    ours = _read_davis(out, len(frames))
    assert set(np.unique(ours)) == {0, 1, 2}
    ref = script_reference(checkpoints["present"], frames, first)
    worst, differing, ties = compare({o: ours == o for o in first}, ref)
    print(f"segment vs the script: worst frame {worst:.4%} different, {differing} pixels, {ties} ties forgiven")
    assert worst <= MAX_DIFFERENT


def test_client_gives_the_masks_of_segment(colour_video, segmented, server: str, tmp_path: Path) -> None:
    root, frames, _ = colour_video
    out = tmp_path / "client"
    args = ["client", str(root / "frames"), "--server", server, "--out-masks", str(out)]
    summary = _run_json([*args, "--mask-dir", str(root / "davis"), "--no-progress", "--json"])
    assert summary["postprocessing"] == VIDEO_DEFAULTS  # as the session reports it
    assert summary["bytes_sent"] == frames.size  # the RGB frames went up, not their luma
    assert np.array_equal(_read_davis(out, len(frames)), _read_davis(segmented[0], len(frames)))


def test_per_object_png_folders_are_read_and_written_in_their_layout(
    colour_video, graphs: dict[str, Path], tmp_path: Path, capsys
) -> None:
    root, frames, _ = colour_video
    out = tmp_path / "objects"
    args = ["segment", str(root / "frames"), "--graphs", str(graphs["present"]), "--no-progress", "--json"]
    assert main([*args, "--mask-dir", str(root / "objects"), "--out-masks", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # The script builds its predictor with non_overlap_masks=false for per-object PNGs, which may overlap.
    assert summary["postprocessing"]["non_overlapping_objects"] is False
    assert sorted(p.name for p in out.iterdir()) == ["001", "002"]
    assert sorted(p.name for p in (out / "001").iterdir()) == [f"{i:05d}.png" for i in range(len(frames))]
    with Image.open(out / "001" / "00000.png") as image:
        assert set(np.unique(np.asarray(image))) <= {0, 1}
    # Asked for, the constraint applies to per-object folders too.
    exclusive = tmp_path / "exclusive"
    assert main([*args, "--mask-dir", str(root / "objects"), "--out-masks", str(exclusive), "--non-overlapping"]) == 0
    both = np.stack([np.asarray(Image.open(exclusive / f"{o:03d}" / "00003.png")) for o in (1, 2)]).astype(bool)
    assert both.any(axis=(1, 2)).all() and not (both[0] & both[1]).any()


def test_colour_mp4_through_segment_and_client_gives_the_same_masks(
    colour_video, graphs: dict[str, Path], server: str, tmp_path: Path
) -> None:
    import cv2

    root, frames, _ = colour_video
    video = tmp_path / "endoscopy.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (frames.shape[2], frames.shape[1]))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    common = ["--mask-dir", str(root / "davis"), "--no-progress"]
    seg_out, client_out = tmp_path / "segment", tmp_path / "client"
    args = ["segment", str(video), "--graphs", str(graphs["present"]), "--out-masks", str(seg_out)]
    assert main([*args, *common]) == 0
    assert main(["client", str(video), "--server", server, "--out-masks", str(client_out), *common]) == 0
    ours = _read_davis(seg_out, len(frames))
    assert np.array_equal(ours, _read_davis(client_out, len(frames)))
    assert set(np.unique(ours)) == {0, 1, 2}


def test_mask_folder_refusals_name_the_problem(colour_video, graphs: dict[str, Path], tmp_path: Path, capsys) -> None:
    root, frames, _ = colour_video
    args = ["segment", str(root / "frames"), "--graphs", str(graphs["present"]), "--out-masks", str(tmp_path / "o")]
    (tmp_path / "empty").mkdir()
    assert main([*args, "--mask-dir", str(tmp_path / "empty")]) != 0
    assert "00000.png" in capsys.readouterr().err
    small = tmp_path / "small"
    small.mkdir()
    Image.fromarray(np.ones((10, 10), np.uint8)).save(small / "00000.png")
    assert main([*args, "--mask-dir", str(small)]) != 0
    assert "10x10 pixels but the frames are 128x96" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
