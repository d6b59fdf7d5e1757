"""The API passes `buf lint`, and the check does catch a broken field name."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUF = shutil.which("buf") or str(Path(sys.executable).parent / "buf")


def _lint(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run([BUF, "lint"], cwd=folder, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module", autouse=True)
def need_buf() -> None:
    if not Path(BUF).exists():
        pytest.fail("buf is not installed: it comes with the dev extra (buf-bin)")


def test_proto_is_lint_clean() -> None:
    result = _lint(ROOT / "proto")
    assert result.returncode == 0, result.stdout + result.stderr


def test_lint_catches_a_bad_field_name(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "proto", tmp_path / "proto")
    proto = tmp_path / "proto" / "medsam2" / "v1" / "segmentation.proto"
    proto.write_text(proto.read_text().replace("uint32 object_id = 2;", "uint32 objectId = 2;", 1))
    result = _lint(tmp_path / "proto")
    assert result.returncode != 0 and "objectId" in result.stdout
