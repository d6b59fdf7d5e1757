"""constraints.txt pins exactly what this environment resolved (scripts/gen_constraints.py --check)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gen_constraints.py"


def _check(out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--check", "--out", str(out)], capture_output=True, text=True, timeout=120
    )


def test_constraints_match_the_installed_environment() -> None:
    result = _check(ROOT / "constraints.txt")
    assert result.returncode == 0, result.stderr


def test_a_drifted_pin_is_named(tmp_path: Path) -> None:
    text = (ROOT / "constraints.txt").read_text()
    assert re.search(r"^numpy==", text, re.M), "numpy is a runtime dependency and must be pinned"
    drifted = tmp_path / "constraints.txt"
    drifted.write_text(re.sub(r"^numpy==.*$", "numpy==1.0.0", text, flags=re.M))
    result = _check(drifted)
    assert result.returncode == 1
    assert "constraints.txt pins numpy==1.0.0, this environment has not" in result.stderr
    assert "is stale: run" in result.stderr


def test_every_dependency_of_the_images_is_pinned_exactly() -> None:
    pins = dict(
        line.split("==", 1) for line in (ROOT / "constraints.txt").read_text().splitlines() if not line.startswith("#")
    )
    for name in ("setuptools", "pip", "torch", "sam2", "onnxruntime", "grpcio", "tensorrt-cu12", "tensorrt-cu12-libs"):
        assert name in pins, name
    assert pins["tensorrt-cu12"] == pins["tensorrt-cu12-libs"] == pins["tensorrt-cu12-bindings"]
    major, minor = (int(p) for p in pins["setuptools"].split(".")[:2])
    assert (major, minor) >= (77, 0), "project.license is an SPDX string, which needs setuptools >= 77"


def test_bootstrap_and_every_image_install_with_the_constraints() -> None:
    assert "-c constraints.txt" in (ROOT / "scripts" / "bootstrap.sh").read_text()
    for dockerfile in ("service.Dockerfile", "build.Dockerfile"):
        text = (ROOT / "deploy" / "docker" / dockerfile).read_text()
        installs = [line for line in text.splitlines() if re.search(r"\bpip (install|wheel)\b", line)]
        assert installs and all("-c " in line or "--no-deps" in line for line in installs), (dockerfile, installs)
