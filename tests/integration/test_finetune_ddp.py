"""``medsam2 finetune`` under ``torchrun``: two CPU ranks (gloo) train one model with averaged gradients."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import patience
from medsam2.datasets.synthetic import SyntheticOptions, write_synthetic_dataset
from medsam2.io.atomic import TEMP_GLOB

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_ranks_train_one_model_and_rank_0_alone_reports(checkpoints, tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_synthetic_dataset(data, SyntheticOptions(volumes=2, videos=0, slices=6, size=48, seed=3))
    out = tmp_path / "ddp.pt"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    torchrun += ["--master_addr", "127.0.0.1", "--master_port", str(_free_port())]
    command = [*torchrun, "-m", "medsam2.cli.main", "finetune", "--checkpoint", str(checkpoints["present"])]
    command += ["--dataset", str(data), "--out", str(out), "--steps", "2", "--clip-length", "2"]
    command += ["--freeze-encoder", "--no-progress", "--json", "--seed", "4"]
    env = os.environ | {"PYTHONPATH": f"{REPO / 'services'}:{REPO / 'export'}", "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        command, capture_output=True, text=True, timeout=patience.LONG_COMMAND_S, env=env, cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr[-3000:]
    (line,) = [x for x in run.stdout.splitlines() if x.startswith("{")]  # one report: rank 0's
    summary = json.loads(line)
    assert summary["steps"] == 2 and all(loss == loss for loss in summary["losses"])  # finite, not NaN
    saved = torch.load(out, map_location="cpu", weights_only=False)
    assert saved["provenance"]["world_size"] == 2 and saved["provenance"]["steps"] == 2
    # No temporary checkpoint or training state was left (rank 0 alone writes them), nor anything in the dataset.
    assert not list(tmp_path.rglob(TEMP_GLOB)) and not list(data.glob("*.pt*"))
