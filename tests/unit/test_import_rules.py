"""The layering rules of ARCHITECTURE.md, checked on the source: what each room may import.

The room rules are read from ARCHITECTURE.md's table (one test per row) and its list of exemptions, so the
table and the test cannot drift apart; the library rules under the table are written out here.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "services" / "medsam2"
ARCHITECTURE = ROOT / "ARCHITECTURE.md"
TABLE_HEADING = "## Layers, bottom to top"
ROOMS_ABOVE = "the rooms above"
_EXEMPTION = re.compile(r"^- `(?P<file>[^`]+)` may import `(?P<room>[^`]+)`:")


# -- the table --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    """One row of the table: its rooms and the modules of ours they may import (besides their own room)."""

    rooms: tuple[str, ...]
    allowed: tuple[str, ...]
    cell: str


@dataclass(frozen=True)
class Exemption:
    """One import the table allows against its rows: ``file`` (relative to the package) may import ``module``."""

    file: str
    module: str


def _module(token: str) -> str:
    """``engine/backend`` -> ``medsam2.engine.backend``; ``graphs.py`` and ``engine/`` -> their module."""
    return "medsam2." + token.removesuffix("/").removesuffix(".py").replace("/", ".")


def _exists(module: str, package: Path) -> bool:
    path = package.joinpath(*module.split(".")[1:])
    return path.is_dir() or path.with_suffix(".py").is_file()


def read_rules(text: str, package: Path = PACKAGE) -> tuple[list[Row], list[Exemption]]:
    """The table's rows and the exemptions listed under it; ``ValueError`` on a row the test cannot read."""
    lines = text[text.index(TABLE_HEADING) :].splitlines()
    rows: list[Row] = []
    exemptions: list[Exemption] = []
    for line in lines[1:]:
        if line.startswith("## "):
            break
        if match := _EXEMPTION.match(line):
            exemptions.append(Exemption(match["file"], _module(match["room"])))
            continue
        if not line.startswith("| `"):
            continue
        first, _, cell = (c.strip() for c in line.strip().strip("|").split("|"))
        rooms = tuple(_module(t) for t in re.findall(r"`([^`]+)`", first))
        named = tuple(_module(t) for t in re.findall(r"`([^`]+)`", cell))
        above = tuple(m for row in rows for m in row.rooms) if ROOMS_ABOVE in cell else ()
        if not named and not above and not cell.startswith("nothing of ours"):
            raise ValueError(f"row {first}: cannot read what it may import from {cell!r}")
        for module in (*rooms, *named):
            if not _exists(module, package):
                raise ValueError(f"row {first} names {module}, which is not in {package}")
        rows.append(Row(rooms, above + named, cell))
    return rows, exemptions


ROWS, EXEMPTIONS = read_rules(ARCHITECTURE.read_text())


# -- imports ----------------------------------------------------------------------------------------------------
def module_of(path: Path, package: Path = PACKAGE) -> str:
    """``.../medsam2/engine/tracker.py`` -> ``medsam2.engine.tracker`` (a package's ``__init__`` -> the package)."""
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, package: Path = PACKAGE) -> set[str]:
    """Every module (or module.name) of ours imported anywhere in ``path``: top level, in functions, or under
    ``TYPE_CHECKING``; relative imports resolved."""
    here = module_of(path, package).split(".")
    if path.name != "__init__.py":
        here = here[:-1]  # the package a module's relative imports start from
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            anchor = here[: len(here) - node.level + 1] if node.level else []
            base = ".".join([*anchor, *([node.module] if node.module else [])])
            # ``from medsam2.engine import backend`` imports medsam2.engine.backend, not all of medsam2.engine.
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return {n for n in names if n.startswith("medsam2.")}


def room_of(path: Path, rows: list[Row], package: Path = PACKAGE) -> Row | None:
    """The row whose room holds ``path``."""
    module = module_of(path, package)
    return next((r for r in rows for room in r.rooms if module == room or module.startswith(room + ".")), None)


def modules(package: Path = PACKAGE) -> list[Path]:
    """The package's source files, less the generated stubs."""
    return sorted(p for p in package.rglob("*.py") if "pb" not in p.relative_to(package).parts)


def _within(name: str, module: str) -> bool:
    return name == module or name.startswith(module + ".")


def violations(row: Row, exemptions: list[Exemption], package: Path = PACKAGE) -> list[str]:
    """``file: module`` for each import of ours, in a file of ``row``'s rooms, that the row and the exemptions
    do not allow."""
    found = []
    for path in modules(package):
        if room_of(path, [row], package) is None:
            continue
        file = path.relative_to(package).as_posix()
        allowed = (*row.rooms, *row.allowed, *(e.module for e in exemptions if e.file == file))
        found += [f"{file}: {n}" for n in sorted(imports_of(path, package)) if not any(_within(n, a) for a in allowed)]
    return found


@pytest.mark.parametrize("row", ROWS, ids=lambda row: "+".join(r.removeprefix("medsam2.") for r in row.rooms))
def test_each_room_imports_only_what_its_row_allows(row: Row) -> None:
    assert violations(row, EXEMPTIONS) == [], f"ARCHITECTURE.md allows {row.cell!r}"


def test_every_file_is_in_a_row_of_the_table() -> None:
    outside = [p for p in modules() if room_of(p, ROWS) is None]
    assert [p.relative_to(PACKAGE).as_posix() for p in outside] == ["__init__.py"]
    assert imports_of(PACKAGE / "__init__.py") == set()  # the package root holds nothing a rule could miss


def stale_exemptions(rows: list[Row], exemptions: list[Exemption], package: Path = PACKAGE) -> list[str]:
    """Exemptions the code no longer needs: the file is gone, its row allows the import anyway, or it has no
    such import any more."""
    stale = []
    for exemption in exemptions:
        path = package / exemption.file
        row = room_of(path, rows, package) if path.is_file() else None
        if row is None:
            stale.append(f"{exemption.file}: no such file in a row")
        elif any(_within(exemption.module, a) for a in (*row.rooms, *row.allowed)):
            stale.append(f"{exemption.file}: its row allows {exemption.module} already")
        elif not any(_within(n, exemption.module) for n in imports_of(path, package)):
            stale.append(f"{exemption.file}: imports {exemption.module} no more")
    return stale


def test_each_exemption_is_still_needed() -> None:
    assert stale_exemptions(ROWS, EXEMPTIONS) == []


# -- the rule test can fail --------------------------------------------------------------------------------------
FAKE_TABLE = f"""{TABLE_HEADING}

| Room | Job | May import |
|---|---|---|
| `errors.py` | errors | nothing of ours |
| `engine/` | numpy | `errors` |
| `backends/` | backends | `engine/backend`, `errors` |
| `server/` | the service | {ROOMS_ABOVE} |
| `gateway/` | HTTP | {ROOMS_ABOVE} |

Exemptions:
- `server/app.py` may import `gateway`: the wiring starts it.

## Next section
"""


@pytest.fixture()
def fake_package(tmp_path: Path) -> Path:
    package = tmp_path / "medsam2"
    files = {
        "__init__.py": "",
        "errors.py": "import medsam2.engine.backend\n",  # a row of "nothing of ours"
        "engine/__init__.py": "",
        "engine/backend.py": "from medsam2.errors import X\n",
        "engine/tracker.py": "def late():\n    from medsam2.server import app\n",  # inside a function
        "backends/__init__.py": "",
        "backends/good.py": "from medsam2.engine import backend\nfrom medsam2.engine.backend import StageBackend\n",
        "backends/bad.py": "from ..engine.tracker import Tracker\n",  # relative, and not engine/backend
        "server/__init__.py": "",
        "server/app.py": "from medsam2.gateway import routes\n",
        "server/other.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import medsam2.gateway.routes\n",
        "gateway/__init__.py": "",
        "gateway/routes.py": "from medsam2.server import app\n",
    }
    for name, text in files.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    return package


def test_violating_imports_fail_their_row(fake_package: Path) -> None:
    rows, exemptions = read_rules(FAKE_TABLE, fake_package)
    assert [r.rooms for r in rows] == [
        ("medsam2.errors",),
        ("medsam2.engine",),
        ("medsam2.backends",),
        ("medsam2.server",),
        ("medsam2.gateway",),
    ]
    assert exemptions == [Exemption("server/app.py", "medsam2.gateway")]
    found = {r.rooms[0]: violations(r, exemptions, fake_package) for r in rows}
    assert found == {
        "medsam2.errors": ["errors.py: medsam2.engine.backend"],
        "medsam2.engine": ["engine/tracker.py: medsam2.server.app"],
        "medsam2.backends": ["backends/bad.py: medsam2.engine.tracker.Tracker"],
        # app.py's import is the exemption; the same import elsewhere in the room is not.
        "medsam2.server": ["server/other.py: medsam2.gateway.routes"],
        "medsam2.gateway": [],
    }
    # Without the exemption, app.py's import of the gateway fails the server's row.
    assert violations(rows[3], [], fake_package) == [
        "server/app.py: medsam2.gateway.routes",
        "server/other.py: medsam2.gateway.routes",
    ]


def test_an_exemption_the_code_no_longer_needs_fails(fake_package: Path) -> None:
    rows, exemptions = read_rules(FAKE_TABLE, fake_package)
    assert stale_exemptions(rows, exemptions, fake_package) == []
    (fake_package / "server" / "app.py").write_text("from medsam2.engine import backend\n")
    more = [*exemptions, Exemption("server/gone.py", "medsam2.gateway"), Exemption("server/app.py", "medsam2.engine")]
    assert stale_exemptions(rows, more, fake_package) == [
        "server/app.py: imports medsam2.gateway no more",
        "server/gone.py: no such file in a row",
        "server/app.py: its row allows medsam2.engine already",
    ]


def test_a_row_the_test_cannot_read_fails(fake_package: Path) -> None:
    with pytest.raises(ValueError, match=r"names medsam2\.nowhere, which is not in"):
        read_rules(FAKE_TABLE.replace("`engine/backend`", "`nowhere`"), fake_package)
    with pytest.raises(ValueError, match=r"cannot read what it may import from 'numpy'"):
        read_rules(
            FAKE_TABLE.replace("| `errors.py` | errors | nothing of ours |", "| `errors.py` | e | numpy |"),
            fake_package,
        )


# -- the library rules under the table ---------------------------------------------------------------------------
def library_imports(path: Path) -> set[str]:
    """Every absolute import in ``path`` (top level or inside functions), ours or not."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def offenders(files: list[Path], forbidden: tuple[str, ...], package: Path = PACKAGE) -> list[str]:
    """``file: module`` for each import of a forbidden module (or a submodule of one)."""
    return [
        f"{path.relative_to(package).as_posix()}: {name}"
        for path in files
        for name in sorted(library_imports(path))
        if any(_within(name, f) for f in forbidden)
    ]


def _room(room: str) -> list[Path]:
    return [p for p in modules() if p.relative_to(PACKAGE).parts[0] == room]


def test_the_engine_knows_nothing_of_grpc_files_or_onnx() -> None:
    forbidden = (
        "grpc",
        "google.protobuf",
        "pydicom",
        "nibabel",
        "highdicom",
        "onnxruntime",
        "openvino",
        "tritonclient",
    )
    assert offenders(_room("engine"), forbidden) == []


def test_the_runtime_never_imports_torch_or_sam2() -> None:
    runtime = [p for p in modules() if p.relative_to(PACKAGE).parts[0] != "cli"]
    assert offenders(runtime, ("torch", "sam2", "medsam2_export")) == []


def test_the_server_knows_nothing_of_onnx() -> None:
    assert offenders(_room("server"), ("onnx", "onnxruntime", "openvino")) == []


def test_the_library_rules_can_fail(fake_package: Path) -> None:
    (fake_package / "engine" / "codec.py").write_text(
        "def read():\n    import pydicom.dataset\n    from grpc import aio\n"
    )
    files = sorted((fake_package / "engine").rglob("*.py"))
    assert offenders(files, ("grpc", "pydicom"), fake_package) == [
        "engine/codec.py: grpc",
        "engine/codec.py: pydicom.dataset",
    ]


@pytest.mark.parametrize("entry", ["medsam2.server.app", "medsam2.cli.main", "medsam2.engine.tracker"])
def test_importing_the_runtime_loads_no_torch(entry: str) -> None:
    code = f"import sys, {entry}; bad = [m for m in ('torch', 'sam2') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


# -- cycles ------------------------------------------------------------------------------------------------------
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
    graph = {module_of(p): _top_level_imports(p) for p in modules()}
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
    # ``from medsam2.engine.session import X`` is reported as ``medsam2.engine.session.X``.
    outside = {n for n in engine if n != "medsam2.engine.session" and not n.startswith("medsam2.engine.session.")}
    assert engine and not outside, outside
