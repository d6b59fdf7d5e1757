"""Actions files: parsing with clear errors, and ``medsam2 segment --actions`` over the real graphs."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image

from medsam2.cli import exit_codes
from medsam2.cli.main import main
from medsam2.engine.actions import (
    BoxStep,
    ClickStep,
    CodedConcept,
    MaskStep,
    ObjectDescription,
    PropagateStep,
    check_actions,
    object_descriptions,
    parse_actions,
)
from medsam2.engine.prompts import Box
from medsam2.errors import InvalidInput, InvalidPrompt
from medsam2.io.actions_file import read_actions
from medsam2.io.dicom_seg import segment_specs
from medsam2.testing.synthetic_ct import write_synthetic_ct
from medsam2_export.parity import synthetic_volume

SLICES, ROWS, COLS, KEY = 8, 64, 72, 4


def _concept(value: str, scheme: str, meaning: str) -> dict[str, str]:
    return {"value": value, "scheme": scheme, "meaning": meaning}


def test_a_full_file_parses_into_typed_steps(tmp_path: Path) -> None:
    data = [
        {"op": "box", "object": 1, "slice": 30, "box": [10, 12.5, 40, 44]},
        {"op": "propagate"},
        {"op": "click", "object": 1, "slice": 33, "point": [20, 21], "positive": False},
        {"op": "click", "object": 2, "slice": 3, "point": [5, 6]},
        {"op": "mask", "object": 1, "slice": 30, "path": "masks/m.png"},
        {"op": "propagate", "range": [2, 40]},
    ]
    steps = parse_actions(data, base_dir=tmp_path)
    assert steps == [
        BoxStep(0, 1, 30, Box(10.0, 12.5, 40.0, 44.0)),
        PropagateStep(1, None),
        ClickStep(2, 1, 33, (20.0, 21.0), False),
        ClickStep(3, 2, 3, (5.0, 6.0), True),
        MaskStep(4, 1, 30, tmp_path / "masks" / "m.png"),
        PropagateStep(5, (2, 40)),
    ]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"op": "box"}, "must hold a JSON list of steps, got a object"),
        ([], "has no steps"),
        (
            [{"op": "propagate"}, {"op": "erase", "object": 1}],
            r"actions\[1\]: unknown op 'erase': choose one of box, click, mask, propagate",
        ),
        ([{"object": 1}], r"actions\[0\]: unknown op none"),
        ([["box"]], r"actions\[0\]: each step must be a JSON object"),
        (
            [{"op": "click", "object": 1, "slice": 3, "point": [1, 2], "positve": False}],
            r"actions\[0\] \(click\): unknown key 'positve': allowed keys are category, colour, label, object, op, "
            r"point, positive, slice, type",
        ),
        ([{"op": "box", "object": 1, "slice": 3}], r"actions\[0\] \(box\): missing 'box'"),
        ([{"op": "box", "object": 1, "slice": 3, "box": [1, 2, 3]}], r"\"box\" must be \[x0, y0, x1, y1\]"),
        ([{"op": "box", "object": 1, "slice": 2.5, "box": [1, 2, 3, 4]}], r"\"slice\" must be a whole number"),
        ([{"op": "box", "object": 0, "slice": 2, "box": [1, 2, 3, 4]}], r"\"object\" must be a positive integer"),
        ([{"op": "box", "object": True, "slice": 2, "box": [1, 2, 3, 4]}], r"\"object\" must be a whole number"),
        ([{"op": "click", "object": 1, "slice": 2, "point": [1, 2], "positive": "no"}], "must be true or false"),
        ([{"op": "propagate", "range": [5, 2]}], r"actions\[0\] \(propagate\): \"range\" \[5, 2\] is reversed"),
        ([{"op": "mask", "object": 1, "slice": 2, "path": 7}], r"\"path\" must be a file name"),
        (
            [{"op": "box", "object": 1, "slice": 2, "box": [1, 2, 3, 4], "label": ""}],
            r"actions\[0\] \(box\): \"label\" must be a name of 1 to 64 characters",
        ),
        ([{"op": "box", "object": 1, "slice": 2, "box": [1, 2, 3, 4], "label": "a\\b"}], "without backslashes"),
        (
            [{"op": "click", "object": 1, "slice": 2, "point": [1, 2], "colour": [256, 0, 0]}],
            r"\"colour\" must be \[r, g, b\] with each a whole number 0..255, got \[256, 0, 0\]",
        ),
        (
            [{"op": "box", "object": 1, "slice": 2, "box": [1, 2, 3, 4], "type": {"value": "4147007"}}],
            r"\"type\" must be \{\"value\": ..., \"scheme\": ..., \"meaning\": ...\}",
        ),
        (
            [{"op": "box", "object": 1, "slice": 2, "box": [1, 2, 3, 4], "type": _concept("1", "S" * 17, "m")}],
            r"\"type\": value and meaning need 1 to 64 characters, scheme 1 to 16",
        ),
    ],
)
def test_bad_steps_name_the_step_and_the_problem(data: object, message: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_actions(data, base_dir=tmp_path)


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        ([{"op": "propagate"}], InvalidInput, r"actions\[0\] \(propagate\): nothing to propagate"),
        ([{"op": "box", "object": 1, "slice": 8, "box": [1, 2, 3, 4]}], InvalidInput, "slice 8 is out of range"),
        (
            [{"op": "box", "object": 1, "slice": 2, "box": [1, 2, 300, 4]}],
            InvalidPrompt,
            r"actions\[0\] \(box\): box .* is outside the 72x64 slice",
        ),
        (
            [{"op": "box", "object": 1, "slice": 5, "box": [1, 2, 30, 40]}, {"op": "propagate", "range": [0, 4]}],
            InvalidInput,
            r"actions\[1\] \(propagate\): key slice 5 of object 1 is outside the range \[0, 4\]",
        ),
        (
            [
                {"op": "box", "object": 1, "slice": 2, "box": [1, 2, 30, 40]},
                {"op": "propagate"},
                {"op": "click", "object": 1, "slice": 7, "point": [3, 3]},
                {"op": "propagate", "range": [0, 6]},
            ],
            InvalidInput,
            r"actions\[3\] \(propagate\): the correction on slice 7 of object 1 is outside",
        ),
    ],
)
def test_steps_are_checked_against_the_study_before_running(
    data: list, error: type, message: str, tmp_path: Path
) -> None:
    with pytest.raises(error, match=message):
        check_actions(parse_actions(data, base_dir=tmp_path), (SLICES, ROWS, COLS), {})


def test_reading_a_file_resolves_masks_beside_it(tmp_path: Path) -> None:
    mask = np.zeros((ROWS, COLS), np.uint8)
    mask[10:20, 5:9] = 255
    (tmp_path / "sub").mkdir()
    Image.fromarray(mask).save(tmp_path / "sub" / "key.png")
    path = tmp_path / "actions.json"
    path.write_text(json.dumps([{"op": "mask", "object": 1, "slice": 2, "path": "sub/key.png"}, {"op": "propagate"}]))
    actions = read_actions(path)
    assert np.array_equal(actions.masks[0], mask > 0)
    path.write_text('[{"op": "box",}]')
    with pytest.raises(InvalidInput, match="not valid JSON: .* at line 1, column"):
        read_actions(path)


def test_prompt_steps_describe_their_object_and_later_steps_override(tmp_path: Path) -> None:
    mass = _concept("4147007", "SCT", "Mass")
    data = [
        {"op": "box", "object": 1, "slice": 3, "box": [1, 2, 30, 40], "label": "liver lesion", "type": mass},
        {"op": "click", "object": 1, "slice": 3, "point": [5, 6], "colour": [255, 0, 0]},
        {"op": "click", "object": 2, "slice": 3, "point": [7, 8]},
        {"op": "propagate"},
    ]
    steps = parse_actions(data, base_dir=tmp_path)
    assert steps[0].describes == ObjectDescription("liver lesion", None, None, CodedConcept("4147007", "SCT", "Mass"))
    assert steps[2].describes is None
    described = object_descriptions(steps)
    mass_concept = CodedConcept("4147007", "SCT", "Mass")
    assert described == {1: ObjectDescription("liver lesion", (255, 0, 0), None, mass_concept)}
    specs = segment_specs(described, [1, 2])
    assert (specs[0].label, specs[0].colour, specs[0].property_type.meaning) == ("liver lesion", (255, 0, 0), "Mass")
    assert specs[0].category == specs[1].category  # left as the default
    assert (specs[1].label, specs[1].property_type.meaning) == ("object 2", "Tissue")


@pytest.fixture(scope="module")
def nifti(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Box]]:
    frames, boxes = synthetic_volume(seed=5, slices=SLICES, height=ROWS, width=COLS)
    path = tmp_path_factory.mktemp("actions") / "study.nii.gz"
    nib.save(nib.Nifti1Image(frames.transpose(2, 1, 0), np.eye(4)), path)
    return path, boxes


def _segment(args: list[str], graphs: dict[str, Path], capsys) -> tuple[int, dict]:
    code = main(["--threads", "2", "segment", *args, "--graphs", str(graphs["present"]), "--no-progress", "--json"])
    out = capsys.readouterr().out.strip().splitlines()
    return code, (json.loads(out[-1]) if code == exit_codes.OK else {})


def _labels(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj).transpose(2, 1, 0)


def test_an_unknown_step_fails_before_a_model_loads(nifti, tmp_path: Path, capsys) -> None:
    path, _ = nifti
    actions = tmp_path / "bad.json"
    actions.write_text(json.dumps([{"op": "box", "object": 1, "slice": 2, "box": [1, 2, 30, 40]}, {"op": "undo"}]))
    code = main(
        [
            "segment",
            str(path),
            "--actions",
            str(actions),
            "--out",
            str(tmp_path / "x.nii.gz"),
            "--checkpoint",
            str(tmp_path / "no-such.pt"),
        ]
    )
    assert code == exit_codes.USAGE
    assert "actions[1]: unknown op 'undo'" in capsys.readouterr().err
    assert not (tmp_path / "x.nii.gz").exists()
    code = main(["segment", str(path), "--actions", str(actions), "--slice", "2", "--out", str(tmp_path / "x.nii.gz")])
    assert code == exit_codes.USAGE and "--slice goes with --box or --mask" in capsys.readouterr().err
    code = main(["segment", str(path), "--box", "1,2,30,40", "--out", str(tmp_path / "x.nii.gz")])
    assert code == exit_codes.USAGE and "--box needs --slice K" in capsys.readouterr().err


def test_modality_must_agree_with_dicom(tmp_path: Path, capsys) -> None:
    series = write_synthetic_ct(tmp_path / "ct", slices=3, size=16, seed=1)
    code = main(
        [
            "segment",
            str(series.folder),
            "--modality",
            "mr",
            "--slice",
            "1",
            "--box",
            "1,1,8,8",
            "--out",
            str(tmp_path / "x.nii.gz"),
        ]
    )
    assert code == exit_codes.USAGE
    assert "--modality MR contradicts the input's DICOM Modality CT" in capsys.readouterr().err


def test_segment_with_an_actions_file(nifti, graphs, tmp_path: Path, capsys) -> None:
    path, boxes = nifti
    box = boxes[0]
    box_text = f"{box.x0:g},{box.y0:g},{box.x1:g},{box.y1:g}"
    shorthand = tmp_path / "shorthand.nii.gz"
    code, summary = _segment(
        [str(path), "--box", box_text, "--slice", str(KEY), "--out", str(shorthand)], graphs, capsys
    )
    assert code == exit_codes.OK and summary["objects"]["1"]["voxels"] == summary["voxels"] > 0

    fix = KEY + 2
    click = [(box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2]
    steps = [{"op": "box", "object": 1, "slice": KEY, "box": [box.x0, box.y0, box.x1, box.y1]}, {"op": "propagate"}]
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps(steps))
    corrected = tmp_path / "corrected.json"
    corrected.write_text(
        json.dumps(
            [*steps, {"op": "click", "object": 1, "slice": fix, "point": click, "positive": False}, {"op": "propagate"}]
        )
    )
    code, _ = _segment([str(path), "--actions", str(plain), "--out", str(tmp_path / "plain.nii.gz")], graphs, capsys)
    assert code == exit_codes.OK
    code, _ = _segment(
        [str(path), "--actions", str(corrected), "--out", str(tmp_path / "fixed.nii.gz"), "--no-largest-component"],
        graphs,
        capsys,
    )
    assert code == exit_codes.OK
    base, fixed = _labels(shorthand), _labels(tmp_path / "fixed.nii.gz")
    # --box/--slice is a box step and a propagate step.
    assert np.array_equal(_labels(tmp_path / "plain.nii.gz"), base)
    # The correction changes its slice; the key side of it is as before (up to the dropped small components).
    assert not np.array_equal(fixed[fix], base[fix])
    assert np.all(base[:fix] <= fixed[:fix])

    mask_png = tmp_path / "key.png"
    Image.fromarray((base[KEY] > 0).astype(np.uint8) * 255).save(mask_png)
    by_mask = tmp_path / "by_mask.json"
    by_mask.write_text(
        json.dumps(
            [
                {"op": "mask", "object": 2, "slice": KEY, "path": "key.png"},
                {"op": "propagate", "range": [KEY - 1, KEY + 1]},
            ]
        )
    )
    code, summary = _segment(
        [str(path), "--actions", str(by_mask), "--out", str(tmp_path / "mask.nii.gz")], graphs, capsys
    )
    assert code == exit_codes.OK and set(summary["objects"]) == {"2"}
    labels = _labels(tmp_path / "mask.nii.gz")
    assert set(np.unique(labels)) <= {0, 2} and not labels[: KEY - 1].any() and not labels[KEY + 2 :].any()


def test_segment_names_objects_as_the_actions_file_says(graphs, tmp_path: Path, capsys) -> None:
    series = write_synthetic_ct(tmp_path / "ct", slices=4, size=32, seed=3)
    actions = tmp_path / "named.json"
    actions.write_text(
        json.dumps(
            [
                {
                    "op": "box",
                    "object": 1,
                    "slice": 2,
                    "box": [6, 6, 26, 26],
                    "label": "liver lesion",
                    "colour": [255, 0, 0],
                    "type": _concept("4147007", "SCT", "Mass"),
                },
                {"op": "propagate"},
            ]
        )
    )
    out = tmp_path / "seg.dcm"
    code, _ = _segment([str(series.folder), "--actions", str(actions), "--out", str(out)], graphs, capsys)
    assert code == exit_codes.OK
    seg = pydicom.dcmread(out)
    [segment] = seg.SegmentSequence
    assert segment.SegmentLabel == "liver lesion"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Mass"
    assert seg.SeriesDescription.startswith("MedSAM2 SEG liver lesion ")
    report = json.loads((tmp_path / "seg.measurements.json").read_text())
    assert report["objects"][0]["label"] == "liver lesion"
