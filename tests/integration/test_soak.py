"""A short soak in CI: create/close cycles of 64-slice studies leave RSS where it was (after a garbage collection).

The long version, with figures, is ``benchmarks/soak.py``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def soak():
    spec = importlib.util.spec_from_file_location("medsam2_soak", ROOT / "benchmarks" / "soak.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_create_close_cycles_return_memory(soak, graphs: dict[str, Path]) -> None:
    running, target = soak.start(graphs["present"])
    try:
        report = soak.run_cycles(target, cycles=150, warmup=50, slices=64, rows=96, columns=96, threads=2)
    finally:
        running.stop(1)
    assert report["errors"] == {}
    # Each cycle holds 16 MiB of model inputs: a leak of one per cycle would add 1.6 GiB here.
    growth = report["rss_end"] - report["rss_after_warmup"]
    assert growth < 40 * 2**20, report


def test_create_prompt_propagate_close_from_threads(soak, graphs: dict[str, Path]) -> None:
    running, target = soak.start(graphs["present"])
    try:
        report = soak.run_work(target, threads=2, seconds=3, slices=3, rows=48, columns=48)
    finally:
        running.stop(1)
    # Key slice 1 of 3: the MedSAM2 3D protocol streams 1, 2 forward and 0 backward (the key slice once).
    assert report["errors"] == {} and report["sessions"] >= 2 and report["slices"] == 3 * report["sessions"]
