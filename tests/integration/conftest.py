"""Shared fixtures: seeded untrained checkpoints and their exported graphs, made once per run."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

TEST_SEED = 11
"""Seed of the tests' own checkpoints (the README's demo uses another)."""


def _export_cache(tmp_path_factory: pytest.TempPathFactory) -> Path | None:
    """A folder that keeps checkpoints and graphs (``MEDSAM2_TEST_CACHE``), keyed by the export code.

    Set, it keeps them between runs. Unset (as in CI) a run builds its own; under pytest-xdist (``make test``) the
    run's workers share one folder beside their temporary folders, so the graphs are exported once per run, not
    once per worker. The key hashes every file of the export package and the graph contract, so a change to
    either makes a new entry instead of reusing stale graphs.
    """
    root = os.environ.get("MEDSAM2_TEST_CACHE")
    if not root:
        if not os.environ.get("PYTEST_XDIST_WORKER"):
            return None
        root = str(tmp_path_factory.getbasetemp().parent / "shared-exports")  # the same for every worker
    repo = Path(__file__).resolve().parents[2]
    digest = hashlib.sha256(str(TEST_SEED).encode())
    for path in sorted(
        [
            *(repo / "export").rglob("*.py"),
            *(repo / "export").rglob("*.yaml"),
            repo / "services" / "medsam2" / "graphs.py",
        ]
    ):
        digest.update(path.read_bytes())
    return Path(root) / digest.hexdigest()[:16]


def _cached(folder: Path, build: Callable[[Path], object]) -> Path:
    """Build ``folder`` once, through a temporary sibling so a crash never leaves a half-written entry.

    A lock beside it makes a second worker (or run) wait for the first one's build instead of repeating it.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.with_name(folder.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not folder.exists():
            tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            build(tmp)
            tmp.rename(folder)
    return folder


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Random checkpoints with the object head biased present and absent."""
    from medsam2_export.model import write_random_checkpoint

    cache = _export_cache(tmp_path_factory)
    out = {}
    for objects in ("present", "absent"):
        name = f"seed{TEST_SEED}-{objects}.pt"
        if cache is None:
            out[objects] = write_random_checkpoint(
                TEST_SEED, tmp_path_factory.mktemp("checkpoints") / name, objects
            ).path
        else:
            folder = _cached(
                cache / f"checkpoint-{objects}",
                lambda tmp, o=objects, n=name: write_random_checkpoint(TEST_SEED, tmp / n, o),
            )
            out[objects] = folder / name
    return out


@pytest.fixture(scope="session")
def graphs(checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """ONNX graphs of both checkpoints, one folder each."""
    from medsam2_export.model import load_model
    from medsam2_export.onnx_export import export_all

    cache = _export_cache(tmp_path_factory)
    out = {}
    for objects, ckpt in checkpoints.items():
        if cache is None:
            folder = tmp_path_factory.mktemp(f"graphs-{objects}")
            export_all(load_model(ckpt), folder)
        else:
            folder = _cached(cache / f"graphs-{objects}", lambda tmp, c=ckpt: export_all(load_model(c), tmp))
        out[objects] = folder
    return out


# A real Triton (CPU, Python backend running the same ONNX files), shared by the whole session.
from triton_server import triton_repository, triton_server, triton_url  # noqa: E402,F401
