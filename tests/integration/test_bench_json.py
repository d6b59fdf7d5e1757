"""`medsam2 bench --json` with OpenVINO: every backend and precision, FLOPs against a measured peak, agreement."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import patience
from medsam2_export.agreement import FP32_DICE_BAR, FP32_LOGIT_BAR

pytest.importorskip("openvino", reason="the openvino extra is not installed (scripts/bootstrap.sh installs it)")

pytestmark = pytest.mark.slow

STAGES = {"image_encoder", "memory_attention", "sam_heads", "memory_encoder"}


def _bench(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDSAM2_")}
    return subprocess.run(
        [sys.executable, "-m", "medsam2.cli.main", "--home", str(home), "--threads", "2", "bench", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=patience.LONG_COMMAND_S,
    )


def test_bench_reports_every_backend_with_flops_and_agreement(
    checkpoints: dict[str, Path], graphs: dict[str, Path], tmp_path: Path
) -> None:
    out = _bench(
        "--checkpoint",
        str(checkpoints["present"]),
        "--graphs",
        str(graphs["present"]),
        "--slices",
        "3",
        "--size",
        "48",
        "--rounds",
        "1",
        "--agreement-slices",
        "4",
        "--backends",
        "onnxruntime,openvino",
        "--json",
        home=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert set(report["backends"]) == {"onnxruntime", "openvino"}
    peak = report["peak_flops_per_s"]["fp32"]
    assert peak > 0 and "matmul" in report["peak_method"]["fp32"]
    for row in report["backends"].values():
        assert row["precision"] == "fp32"
        assert abs(row["ratio_vs_reference"] - row["s_per_slice"] / report["reference_s_per_slice"]) < 1e-9
        assert set(row["stages"]) == STAGES
        # FLOPs per slice are the stages' sum, and the fraction of peak follows from them and the time.
        assert abs(sum(s["gflop_per_slice"] for s in row["stages"].values()) - row["gflop_per_slice"]) < 1e-6
        assert abs(row["fraction_of_peak"] - row["gflop_per_slice"] * 1e9 / row["s_per_slice"] / peak) < 1e-9
        # Every slice is encoded once: the encoder's share is its FLOPs for one 512x512 slice (about 59 GFLOP).
        assert 40 < row["stages"]["image_encoder"]["gflop_per_slice"] < 80
        assert row["outside_graphs_s_per_slice"] >= 0
    assert "mask_dice_vs_fp32" not in report["backends"]["onnxruntime"]  # the fp32 path itself
    # Two fp32 runtimes agree within the fp32 bar on any x86 CPU, not bit for bit: without AVX-512 their kernels
    # round differently (Dice 0.99998 on an AVX2-only EPYC).
    agreement = report["agreement"]
    assert (agreement["fp32_dice_bar"], agreement["fp32_logit_bar"]) == (FP32_DICE_BAR, FP32_LOGIT_BAR)
    openvino = report["backends"]["openvino"]
    assert openvino["mask_dice_vs_fp32"] >= FP32_DICE_BAR, openvino
    assert openvino["max_abs_logit_diff_vs_fp32"] <= FP32_LOGIT_BAR, openvino
    assert openvino["bench_volume_mask_dice_vs_fp32"] >= FP32_DICE_BAR, openvino
    goals = report["goals"]
    assert goals["fp32_onnxruntime_every_round"]["goal"] == 0.8
    assert goals["best_path_at_dice_bar"]["backend"] in report["backends"]


def test_bench_refuses_an_unknown_backend(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    out = _bench("--checkpoint", str(checkpoints["present"]), "--backends", "onnxruntime,openvino-fp16", home=tmp_path)
    assert out.returncode == 2 and "openvino-fp16" in out.stderr
