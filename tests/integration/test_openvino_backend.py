"""The OpenVINO backend against ONNX Runtime: fp32 equal through the engine, reduced precision measured on masks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openvino", reason="the openvino extra is not installed (scripts/bootstrap.sh installs it)")

import patience
from medsam2.backends.onnxruntime_backend import OnnxRuntimeBackend
from medsam2.backends.openvino_backend import OpenVinoBackend, check_precision, cpu_capabilities
from medsam2.backends.select import make_embedded_backend, resolve_precision
from medsam2.engine.backend import StageBackend
from medsam2.engine.tracker import Direction, Tracker
from medsam2.errors import BackendUnavailable, ConfigError, InvalidInput
from medsam2.graphs import GRAPHS, Stage
from medsam2.server.app import make_backend
from medsam2.server.config import ServerSettings
from medsam2.server.limiter import InstrumentedBackend
from medsam2_export.agreement import DICE_BAR, compare, parity_prompts, run_protocol
from medsam2_export.onnx_export import sample_inputs
from medsam2_export.parity import PARITY_OPTIONS, synthetic_volume

FP32_TOLERANCE = 1e-4
CAPABILITIES = cpu_capabilities()
"""What OpenVINO reports of this CPU: the tests below branch on it (BF16 needs AVX-512 BF16 or AMX)."""
HAS_BF16 = "BF16" in CAPABILITIES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def onnxruntime(graphs: dict[str, Path]) -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend(graphs["present"], threads=2)


@pytest.fixture(scope="module")
def openvino(graphs: dict[str, Path]) -> OpenVinoBackend:
    backend = OpenVinoBackend(graphs["present"], precision="fp32", threads=2)
    yield backend
    backend.close()


def test_protocol_name_and_precision(openvino: OpenVinoBackend) -> None:
    assert isinstance(openvino, StageBackend)
    assert (openvino.name, openvino.precision) == ("openvino", "fp32")


@pytest.mark.parametrize("stage", list(GRAPHS), ids=lambda s: s.value)
def test_each_graph_matches_onnxruntime_in_fp32(openvino, onnxruntime, stage: Stage) -> None:
    inputs = sample_inputs(GRAPHS[stage], batch=2, seed=5)
    got, want = openvino.run(stage, inputs), onnxruntime.run(stage, inputs)
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name].shape == want[name].shape and got[name].dtype == want[name].dtype, name
        assert float(np.max(np.abs(got[name] - want[name]))) <= FP32_TOLERANCE, name


def test_engine_logits_match_onnxruntime_in_fp32(openvino, onnxruntime) -> None:
    frames, boxes = synthetic_volume(seed=2, slices=5)
    trackers = [Tracker(b, frames, PARITY_OPTIONS) for b in (openvino, onnxruntime)]
    results = []
    for tracker in trackers:
        for obj_id, box in enumerate(boxes, start=1):
            tracker.add_prompt(obj_id, 2, box=box)
        results.append([r.low_res for r in tracker.propagate(Direction.FORWARD, start=2)])
    assert len(results[0]) == len(results[1]) == 3
    for got, want in zip(*results, strict=False):
        assert got.shape == (2, 128, 128)
        assert float(np.max(np.abs(got - want))) <= FP32_TOLERANCE


def test_bad_input_is_refused_naming_the_tensor(openvino) -> None:
    inputs = sample_inputs(GRAPHS[Stage.MEMORY_ENCODER], batch=1, seed=0)
    inputs["binarize"] = inputs["binarize"].astype(np.int64)
    with pytest.raises(InvalidInput, match="binarize"):
        openvino.run(Stage.MEMORY_ENCODER, inputs)
    with pytest.raises(BackendUnavailable, match="ensemble"):
        openvino.run(Stage.TRACK_STEP, {})


def test_bf16_is_refused_where_the_cpu_lacks_it(graphs: dict[str, Path]) -> None:
    with pytest.raises(BackendUnavailable, match="cannot run bf16 natively .*FP32, INT8.*--precision fp32"):
        check_precision("bf16", ["FP32", "INT8"])
    with pytest.raises(BackendUnavailable, match="cannot run mixed natively"):
        check_precision("mixed", ["FP32"])
    with pytest.raises(InvalidInput, match="fp16"):
        OpenVinoBackend(graphs["present"], precision="fp16")


def test_selection_by_settings(graphs: dict[str, Path]) -> None:
    folder = graphs["present"]
    with pytest.raises(ConfigError, match="fp32 only"):
        make_embedded_backend(folder, backend="onnxruntime", precision="bf16")
    settings = ServerSettings(model_repository=folder, backend="openvino", precision="fp32")
    served = InstrumentedBackend(make_backend(settings, threads=2))
    assert (served.name, served.precision) == ("openvino", "fp32")  # what GetServerInfo reports
    with pytest.raises(ConfigError, match="triton-url"):
        make_backend(ServerSettings(triton_url="127.0.0.1:1", backend="openvino"), threads=2)
    assert resolve_precision("onnxruntime", "auto") == "fp32"
    # auto picks bf16 for the heavy stages only where the CPU computes bf16 natively.
    expected = "mixed" if HAS_BF16 else "fp32"
    assert resolve_precision("openvino", "auto") == expected, f"OpenVINO reports {CAPABILITIES}"


@pytest.mark.skipif(not HAS_BF16, reason=f"this CPU has no native bf16 (OpenVINO reports {CAPABILITIES})")
def test_reduced_precision_against_fp32_on_the_parity_volume(graphs: dict[str, Path], onnxruntime) -> None:
    """The default reduced precision reaches the Dice bar; full bf16 is measured and, below the bar, not default."""
    frames, prompts = parity_prompts(seed=0, slices=16)
    fp32 = run_protocol(onnxruntime, frames, prompts, PARITY_OPTIONS)
    figures = {}
    for precision in ("mixed", "bf16"):
        backend = OpenVinoBackend(graphs["present"], precision=precision, threads=2)
        figures[precision] = compare(run_protocol(backend, frames, prompts, PARITY_OPTIONS), fp32)
        backend.close()
    default = resolve_precision("openvino", "auto")
    assert figures[default]["mask_dice_vs_fp32"] >= DICE_BAR, figures
    for precision, agreement in figures.items():
        assert 0 < agreement["max_abs_logit_diff_vs_fp32"] < 1, figures  # reduced, but not an absent/present flip
        if agreement["mask_dice_vs_fp32"] < DICE_BAR:
            assert precision != default, figures


def test_segment_and_serve_choose_backend_by_flag_and_environment(graphs: dict[str, Path], tmp_path: Path) -> None:
    import nibabel as nib

    frames, boxes = synthetic_volume(seed=4, slices=3, height=48, width=40)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(frames.transpose(2, 1, 0)), np.eye(4)), tmp_path / "v.nii.gz")
    box = boxes[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDSAM2_")}

    def segment(*extra: str, **environ: str) -> subprocess.CompletedProcess:
        command = [
            sys.executable,
            "-m",
            "medsam2.cli.main",
            "--threads",
            "2",
            "--home",
            str(tmp_path),
            "segment",
            str(tmp_path / "v.nii.gz"),
            "--graphs",
            str(graphs["present"]),
            "--slice",
            "1",
            "--box",
            f"{box.x0},{box.y0},{box.x1},{box.y1}",
            "--out",
            str(tmp_path / "out.nii.gz"),
            "--preset",
            "none",
            "--json",
            "--no-progress",
            *extra,
        ]
        return subprocess.run(
            command, capture_output=True, text=True, env={**env, **environ}, timeout=patience.COMMAND_S
        )

    by_env = segment(MEDSAM2_BACKEND="openvino", MEDSAM2_PRECISION="fp32")
    assert by_env.returncode == 0, by_env.stderr[-2000:]
    assert json.loads(by_env.stdout)["backend"] == "openvino"
    flag_wins = segment("--backend", "onnxruntime", MEDSAM2_BACKEND="openvino")
    assert flag_wins.returncode == 0, flag_wins.stderr[-2000:]
    assert json.loads(flag_wins.stdout)["backend"] == "onnxruntime"
    bad = segment(MEDSAM2_PRECISION="fp16")
    assert bad.returncode == 2 and "MEDSAM2_PRECISION" in bad.stderr and "fp16" in bad.stderr
    refused = segment("--precision", "bf16")
    assert refused.returncode == 2 and "fp32 only" in refused.stderr
    help_text = subprocess.run(
        [sys.executable, "-m", "medsam2.cli.main", "serve", "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    ).stdout
    assert "MEDSAM2_BACKEND" in help_text and "MEDSAM2_PRECISION" in help_text
