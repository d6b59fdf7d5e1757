"""The layering rules of ARCHITECTURE.md, checked on the source: what each room may import."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "services" / "medsam2"


def imports_of(path: Path) -> set[str]:
    """Every module name imported anywhere in ``path`` (top level or inside functions)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def modules(*rooms: str) -> list[Path]:
    """Source files of the given rooms of the package (all of it when none are given)."""
    roots = [PACKAGE / room for room in rooms] or [PACKAGE]
    return sorted(
        p
        for root in roots
        for p in (root.rglob("*.py") if root.is_dir() else [root.with_suffix(".py")])
        if "pb" not in p.relative_to(PACKAGE).parts
    )


def offenders(files: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    """``file: module`` for each import of a forbidden module (or a submodule of one)."""
    found = []
    for path in files:
        for name in sorted(imports_of(path)):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                found.append(f"{path.relative_to(PACKAGE)}: {name}")
    return found


def test_the_engine_knows_nothing_of_grpc_files_or_the_server() -> None:
    forbidden = (
        "grpc",
        "google.protobuf",
        "pydicom",
        "nibabel",
        "highdicom",
        "medsam2.server",
        "medsam2.api",
        "medsam2.io",
        "medsam2.cli",
        "onnxruntime",
        "tritonclient",
    )
    assert offenders(modules("engine"), forbidden) == []


def test_the_runtime_never_imports_torch_or_sam2() -> None:
    runtime = [p for p in modules() if "cli" not in p.relative_to(PACKAGE).parts]
    assert offenders(runtime, ("torch", "sam2", "medsam2_export")) == []


def test_nothing_below_the_server_imports_the_server() -> None:
    below = [p for p in modules() if p.relative_to(PACKAGE).parts[0] not in {"server", "cli", "gateway"}]
    assert offenders(below, ("medsam2.server", "medsam2.gateway")) == []


def test_only_the_command_line_imports_the_command_line() -> None:
    others = [p for p in modules() if p.relative_to(PACKAGE).parts[0] != "cli"]
    assert offenders(others, ("medsam2.cli",)) == []


def test_the_server_knows_nothing_of_onnx() -> None:
    assert offenders(modules("server"), ("onnx", "onnxruntime", "openvino")) == []


@pytest.mark.parametrize("entry", ["medsam2.server.app", "medsam2.cli.main", "medsam2.engine.tracker"])
def test_importing_the_runtime_loads_no_torch(entry: str) -> None:
    code = f"import sys, {entry}; bad = [m for m in ('torch', 'sam2') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(path: Path) -> set[str]:
    """Modules of this package imported at module level (imports inside functions are deferred by design)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return {n for n in names if n.startswith("medsam2.")}


def test_no_module_level_import_cycles() -> None:
    graph = {_module_name(p): _top_level_imports(p) for p in modules()}
    graph = {m: {n for n in deps if n in graph and n != m} for m, deps in graph.items()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = 1
        for dep in sorted(graph[module]):
            if state.get(dep) == 1:
                cycles.append([*trail[trail.index(dep) :], dep] if dep in trail else [module, dep])
            elif dep not in state:
                visit(dep, [*trail, dep])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_the_servicer_drives_the_engine_only_through_the_session_interface() -> None:
    # The servicer translates messages to ``engine.session`` calls; trackers and protocols are the session's.
    servicer = PACKAGE / "server" / "servicer.py"
    engine = {n for n in imports_of(servicer) if n == "medsam2.engine" or n.startswith("medsam2.engine.")}
    assert engine == {"medsam2.engine.session"}
