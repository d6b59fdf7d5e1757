"""tests/conftest.py: under make test and CI, a skip nobody listed fails the run; a listed one does not."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"


def _conftest():
    spec = importlib.util.spec_from_file_location("suite_conftest", CONFTEST)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_listed_skips_pass_only_with_their_reason() -> None:
    conftest = _conftest()
    listed = "tests/integration/test_model_repository.py::test_read_only_out_dir_is_not_writable"
    skips = [
        (listed, "root ignores folder permissions"),
        (listed + "[param]", "root ignores folder permissions"),
        (listed, "Triton is not set up here"),  # listed, but for another reason
        ("tests/integration/test_browser.py::test_page", "needs Debian's chromium"),
    ]
    assert conftest.unexpected_skips(skips) == skips[2:]


def _run(folder: Path, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("CI", "MEDSAM2_STRICT_SKIPS")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(folder)],
        cwd=folder,
        capture_output=True,
        text=True,
        env={**clean, **env},
        timeout=300,
    )


def test_an_unexpected_skip_fails_a_strict_run(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(CONFTEST.read_text())
    (tmp_path / "test_skips.py").write_text("import pytest\n\ndef test_a():\n    pytest.skip('no server here')\n")
    relaxed = _run(tmp_path)
    assert relaxed.returncode == 0, relaxed.stdout
    strict = _run(tmp_path, MEDSAM2_STRICT_SKIPS="1")
    assert strict.returncode == 1, strict.stdout
    assert "unexpected skips" in strict.stdout and "test_skips.py::test_a: no server here" in strict.stdout
    assert _run(tmp_path, CI="true").returncode == 1


def test_every_listed_skip_names_a_test_that_exists() -> None:
    # A renamed or deleted test would leave its entry behind, allowing a skip that no longer names anything.
    root = CONFTEST.parents[1]
    for nodeid in _conftest().EXPECTED_SKIPS:
        file, _, name = nodeid.partition("::")
        assert re.search(rf"^def {re.escape(name)}\(", (root / file).read_text(), re.MULTILINE), nodeid
