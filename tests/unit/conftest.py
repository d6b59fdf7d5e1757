"""The unit tier stays torch-free: a run of only these tests that ends with torch or sam2 imported fails.

The serving runtime imports neither, and ``make test-fast`` is meant to run where neither is installed. The check
runs at the end of the session, so an import inside a test counts as much as one at module level. A run that
also collected other tiers (``pytest`` on all of ``tests``) imports torch legitimately and is not checked.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent
FORBIDDEN = ("torch", "sam2")
"""Top-level packages the unit tier must not import, directly or through the code it tests."""


def forbidden_imports(module_names: Iterable[str]) -> list[str]:
    """The names among ``module_names`` that are one of ``FORBIDDEN`` or a submodule of one, sorted."""
    return sorted(name for name in module_names if name.split(".", 1)[0] in FORBIDDEN)


def _only_unit(items: list[pytest.Item]) -> bool:
    return bool(items) and all(UNIT in Path(item.path).resolve().parents for item in items)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail a unit-only run that imported torch or sam2, naming the modules."""
    found = forbidden_imports(sys.modules)
    if not (found and _only_unit(session.items)):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    packages = sorted({name.split(".", 1)[0] for name in found})
    message = f"the unit tier imported {' and '.join(packages)} ({len(found)} modules): it must stay torch-free"
    if reporter is not None:
        reporter.write_line(message, red=True)
    if session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
