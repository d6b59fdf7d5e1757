"""``medsam2 client`` against an in-process service: the same masks as ``medsam2 segment``, and clear refusals.

The NIfTI CT says nothing of its modality, so both commands get ``--preset auto --modality CT``; its
intensities reach only part of the abdomen window, so MedSAM2's min-max of the clipped volume matters.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medsam2.backends.onnxruntime_backend import OnnxRuntimeBackend
from medsam2.cli.main import main
from medsam2.server.app import start_server
from medsam2.server.config import ServerSettings

BOX = [12, 10, 30, 28]
KEY = 4


@pytest.fixture(scope="module")
def ct(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small CT as NIfTI: body and a brighter lesion, -120..180 HU (inside the 400/40 window)."""
    rng = np.random.default_rng(3)
    x, y, z = np.meshgrid(np.arange(40), np.arange(44), np.arange(9), indexing="ij")
    hu = np.full(x.shape, -120, np.int16)
    hu[(x - 20) ** 2 / 300 + (y - 22) ** 2 / 380 < 1] = 30
    hu[(x - 21) ** 2 + (y - 19) ** 2 + 4 * (z - KEY) ** 2 < 40] = 150
    hu = hu + rng.integers(-25, 25, hu.shape).astype(np.int16)
    affine = np.array([[-0.8, 0, 0, 100.0], [0, -0.8, 0, 50.0], [0, 0, 2.5, -30.0], [0, 0, 0, 1]])
    path = tmp_path_factory.mktemp("nifti") / "ct.nii.gz"
    nib.save(nib.Nifti1Image(hu, affine), str(path))
    return path


@pytest.fixture(scope="module")
def server(graphs: dict[str, Path]):
    settings = ServerSettings(port=0, metrics_port=0, model_repository=graphs["present"])
    running = start_server(settings, OnnxRuntimeBackend(graphs["present"], threads=2))
    yield f"127.0.0.1:{running.port}"
    running.stop(2)


def _actions(folder: Path, steps: list[dict]) -> Path:
    path = folder / "actions.json"
    path.write_text(json.dumps(steps))
    return path


def test_client_and_segment_give_identical_masks(
    ct: Path,
    server: str,
    graphs,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    actions = _actions(
        tmp_path,
        [
            {"op": "box", "object": 1, "slice": KEY, "box": BOX},
            {"op": "propagate"},
            {"op": "click", "object": 1, "slice": KEY + 2, "point": [21, 19], "positive": False},
            {"op": "propagate"},
        ],
    )
    common = ["--actions", str(actions), "--preset", "auto", "--modality", "CT", "--no-progress"]
    assert (
        main(["client", str(ct), "--server", server, "--out", str(tmp_path / "client.nii.gz"), "--json", *common]) == 0
    )
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["preset"] == "abdomen" and summary["bytes_sent"] == 9 * 44 * 40 * 2
    assert (
        main(
            ["segment", str(ct), "--graphs", str(graphs["present"]), "--out", str(tmp_path / "segment.nii.gz"), *common]
        )
        == 0
    )
    via_client = nib.load(str(tmp_path / "client.nii.gz"))
    direct = nib.load(str(tmp_path / "segment.nii.gz"))
    assert np.asarray(direct.dataobj).any()
    assert np.array_equal(np.asarray(via_client.dataobj), np.asarray(direct.dataobj))
    assert np.allclose(via_client.affine, nib.load(str(ct)).affine)


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (["--store", "hospital"], 2, "--store: the server stores a SEG and SR over the DICOM series it came from"),
        (["--pacs", "hospital"], 2, "give either an INPUT file or folder, or --pacs"),
        (["--box", "1,1,5,5"], 2, "--actions replaces --box and --slice"),
        (["--label", "node"], 2, '--label, --colour and --type go with --box; in an actions file use "label"'),
    ],
)
def test_client_refuses_bad_flags_before_any_work(
    ct: Path, server: str, tmp_path: Path, extra: list[str], code: int, message: str, capsys: pytest.CaptureFixture
) -> None:
    actions = _actions(tmp_path, [{"op": "box", "object": 1, "slice": KEY, "box": BOX}, {"op": "propagate"}])
    assert (
        main(
            [
                "client",
                str(ct),
                "--server",
                server,
                "--actions",
                str(actions),
                "--out",
                str(tmp_path / "x.nii.gz"),
                *extra,
            ]
        )
        == code
    )
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.nii.gz").exists()


def test_client_names_a_bad_step_and_opens_nothing(
    ct: Path, server: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from medsam2.api.client import Client

    actions = _actions(tmp_path, [{"op": "box", "object": 1, "slice": KEY, "box": BOX}, {"op": "wiggle"}])
    assert (
        main(["client", str(ct), "--server", server, "--actions", str(actions), "--out", str(tmp_path / "x.nii.gz")])
        == 2
    )
    assert "actions[1]: unknown op 'wiggle'" in capsys.readouterr().err
    far = _actions(tmp_path, [{"op": "box", "object": 1, "slice": 40, "box": BOX}, {"op": "propagate"}])
    assert (
        main(["client", str(ct), "--server", server, "--actions", str(far), "--out", str(tmp_path / "x.nii.gz")]) == 2
    )
    assert "actions[0] (box): slice 40 is out of range" in capsys.readouterr().err
    client = Client(server)
    assert client.list_sessions() == []  # the session opened for the second file was closed again
    client.close()


def test_client_names_the_object_in_the_seg_and_sr(server: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import highdicom as hd

    from medsam2.testing.synthetic_ct import write_synthetic_ct

    series = write_synthetic_ct(tmp_path / "ct", slices=4, size=32, seed=3)
    out = tmp_path / "seg.dcm"
    args = ["client", str(series.folder), "--server", server, "--box", "6,6,26,26", "--slice", "2", "--out", str(out)]
    named = ["--label", "liver lesion", "--colour", "255,0,0", "--type", "4147007,SCT,Mass", "--no-progress"]
    assert main([*args, *named]) == 0
    capsys.readouterr()
    seg = hd.seg.segread(out)
    described = seg.get_segment_description(1)
    assert (described.segment_label, described.segmented_property_type.meaning) == ("liver lesion", "Mass")
    sr = hd.sr.srread(tmp_path / "seg.sr.dcm")
    assert {g.tracking_identifier for g in sr.content.get_planar_roi_measurement_groups()} == {"liver lesion"}
    assert sr.SeriesDescription.startswith(f"MedSAM2 SR of SEG {seg.SeriesNumber}: liver lesion ")
    assert main([*args, "--colour", "255,0"]) == 2
    assert "--colour must be [r, g, b]" in capsys.readouterr().err
