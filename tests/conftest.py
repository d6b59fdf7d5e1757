"""Shared fixtures: seeded untrained checkpoints and their exported graphs, made once per run."""

from __future__ import annotations

from pathlib import Path

import pytest

TEST_SEED = 11
"""Seed of the tests' own checkpoints (the README's demo uses another)."""


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Random checkpoints with the object head biased present and absent."""
    from medsam2_export.model import write_random_checkpoint

    folder = tmp_path_factory.mktemp("checkpoints")
    return {
        objects: write_random_checkpoint(TEST_SEED, folder / f"seed{TEST_SEED}-{objects}.pt", objects).path
        for objects in ("present", "absent")
    }


@pytest.fixture(scope="session")
def graphs(checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """ONNX graphs of both checkpoints, one folder each."""
    from medsam2_export.model import load_model
    from medsam2_export.onnx_export import export_all

    out = {}
    for objects, ckpt in checkpoints.items():
        folder = tmp_path_factory.mktemp(f"graphs-{objects}")
        export_all(load_model(ckpt), folder)
        out[objects] = folder
    return out


# A real Triton (CPU, Python backend running the same ONNX files), shared by the whole session.
from triton_server import triton_repository, triton_server, triton_url  # noqa: E402,F401
