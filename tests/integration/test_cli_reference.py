"""`medsam2 parity` and `medsam2 bench` as a user runs them: real subprocesses, small volumes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import patience

MEDSAM2 = [sys.executable, "-m", "medsam2.cli.main"]


def _run(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDSAM2_")}
    return subprocess.run(
        [*MEDSAM2, "--home", str(home), "--threads", "2", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=patience.LONG_COMMAND_S,
    )


def test_parity_json(checkpoints: dict[str, Path], graphs: dict[str, Path], tmp_path: Path) -> None:
    out = _run(
        "parity",
        "--checkpoint",
        str(checkpoints["present"]),
        "--graphs",
        str(graphs["present"]),
        "--slices",
        "6",
        "--seed",
        "7",
        "--json",
        home=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert set(report) == {"max_abs_logit_diff", "max_mask_disagreement", "frames", "objects"}
    assert report["objects"] == 2 and report["frames"] > 10
    assert report["max_abs_logit_diff"] <= 1e-3 and report["max_mask_disagreement"] <= 1e-3


def test_bench_json(checkpoints: dict[str, Path], graphs: dict[str, Path], tmp_path: Path) -> None:
    out = _run(
        "bench",
        "--checkpoint",
        str(checkpoints["present"]),
        "--graphs",
        str(graphs["present"]),
        "--slices",
        "4",
        "--size",
        "64",
        "--rounds",
        "1",
        "--backends",
        "onnxruntime",
        "--json",
        home=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert report["reference_s_per_slice"] > 0
    row = report["backends"]["onnxruntime"]
    assert row["s_per_slice"] > 0
    assert abs(row["ratio_vs_reference"] - row["s_per_slice"] / report["reference_s_per_slice"]) < 1e-9
    assert row["features_encoded"] == 4 and row["feature_bytes_per_slice"] == 4 * 2**20
    assert report["peak_rss_bytes"] > 0
