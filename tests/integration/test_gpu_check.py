"""scripts/gpu_check.py on the CPU (``--device cpu``): the same code that runs on a GPU, small and fast."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_check.py"


def _load():  # the script as a module
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_cpu_dry_run_writes_the_report(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    gpu_check = _load()
    out = tmp_path / "report.json"
    code = gpu_check.main(
        [
            "--device",
            "cpu",
            "--checkpoint",
            str(checkpoints["present"]),
            "--out",
            str(out),
            "--precisions",
            "fp32",
            "--throughput-precision",
            "fp32",
            "--parity-slices",
            "2",
            "--slices",
            "2",
            "--concurrency",
            "1",
            "2",
            "--threads",
            "2",
        ]
    )
    assert code == 0
    report = json.loads(out.read_text())
    # fp32 on the CPU is the reference itself: any difference would be a bug in the check, not precision.
    fp32 = report["agreement"]["fp32"]
    assert fp32["max_abs_logit_diff"] == 0.0 and fp32["mask_agreement"] == 1.0 and fp32["mask_dice"] == 1.0
    runs = report["throughput"]["runs"]
    assert [r["sessions"] for r in runs] == [1, 2]
    for run in runs:
        # Both directions from the key slice: every slice but the key one is a propagated slice.
        assert run["slices"] == run["sessions"] * (2 - 1)
        assert 0 < run["p50_s_per_slice"] <= run["p99_s_per_slice"] and run["slices_per_s"] > 0
        assert run["mean_stage_calls_per_batch"] >= 1
    assert report["peak_gpu_memory_bytes"] is None and report["device"] == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_missing_cuda_fails_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gpu_check = _load()
    out = tmp_path / "report.json"
    assert gpu_check.main(["--device", "cuda", "--out", str(out)]) == gpu_check.EXIT_NO_DEVICE
    assert "sees no CUDA device" in capsys.readouterr().err
    assert not out.exists()


def test_micro_batcher_merges_concurrent_calls_and_returns_each_its_rows() -> None:
    """The cross-session batcher's bookkeeping: concurrent calls are merged, and each caller gets its own rows."""
    import threading

    import numpy as np

    from medsam2.graphs import GRAPHS, Stage
    from medsam2_export.onnx_export import sample_inputs

    gpu_check = _load()

    calls: list[int] = []
    lock = threading.Lock()

    class Recording:
        def run(self, stage, inputs):
            with lock:
                calls.append(next(iter(inputs.values())).shape[0])
            return {k: v * 2 for k, v in inputs.items()}

    batcher = gpu_check.MicroBatcher(Recording(), max_wait_s=0.05)
    requests = [sample_inputs(GRAPHS[Stage.MASK_SELECT], batch=1 + i % 2, seed=i) for i in range(4)]
    results: list[dict] = [{}] * 4
    threads = [
        threading.Thread(target=lambda i=i: results.__setitem__(i, batcher.run(Stage.MASK_SELECT, requests[i])))
        for i in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batcher.close()
    for request, result in zip(requests, results, strict=True):
        assert all(np.array_equal(result[k], request[k] * 2) for k in request)
    assert sum(calls) == 6 and len(calls) < 4  # merged: fewer backend calls than requests
