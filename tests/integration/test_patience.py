"""The suite's waits are hang guards below pytest-timeout's limit, and the limit is the one patience.py names."""

from __future__ import annotations

import shlex
import tomllib
from pathlib import Path

import patience

REPO = Path(__file__).resolve().parents[2]


def _pytest_timeout() -> int:
    addopts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["addopts"]
    (value,) = [a.split("=", 1)[1] for a in shlex.split(addopts) if a.startswith("--timeout=")]
    return int(value)


def test_every_wait_is_below_the_per_test_limit() -> None:
    assert _pytest_timeout() == patience.TEST_LIMIT_S
    bounds_s = {
        "SERVER_START_S": patience.SERVER_START_S,
        "COMMAND_S": patience.COMMAND_S,
        "LONG_COMMAND_S": patience.LONG_COMMAND_S,
        "TRITON_CALL_S": patience.TRITON_CALL_S,
        "BROWSER_STEP_MS": patience.BROWSER_STEP_MS / 1000,
        "BROWSER_PROPAGATION_MS": patience.BROWSER_PROPAGATION_MS / 1000,
    }
    assert all(0 < bound < patience.TEST_LIMIT_S for bound in bounds_s.values()), bounds_s
    # Ordered as the work they guard: a start is shorter than a command, a step shorter than a propagation.
    assert patience.SERVER_START_S < patience.COMMAND_S < patience.LONG_COMMAND_S
    assert patience.BROWSER_STEP_MS < patience.BROWSER_PROPAGATION_MS
