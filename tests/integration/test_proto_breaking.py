"""v1 changes are additive: `buf breaking` against the previous API passes, and would catch a removed field."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BASELINE = ROOT / "tests" / "data" / "proto_v1_baseline"
BUF = shutil.which("buf") or str(Path(sys.executable).parent / "buf")


def _breaking(proto: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [BUF, "breaking", "--against", str(BASELINE)], cwd=proto, capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module", autouse=True)
def need_buf() -> None:
    if not Path(BUF).exists():
        pytest.fail("buf is not installed: it comes with the dev extra (buf-bin)")


def test_api_is_compatible_with_the_previous_v1() -> None:
    result = _breaking(ROOT / "proto")
    assert result.returncode == 0, result.stdout + result.stderr


def test_breaking_catches_a_removed_field(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "proto", tmp_path / "proto")
    proto = tmp_path / "proto" / "medsam2" / "v1" / "segmentation.proto"
    text = proto.read_text()
    assert "  bool keep_previous_points = 7;\n" in text
    proto.write_text(text.replace("  bool keep_previous_points = 7;\n", "", 1))
    result = _breaking(tmp_path / "proto")
    assert result.returncode != 0 and "keep_previous_points" in result.stdout + result.stderr
