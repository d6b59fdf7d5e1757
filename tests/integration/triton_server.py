"""A real Triton for tests: the CPU repository of the ``graphs["present"]`` fixture, served on loopback.

Import the fixtures where they are needed (a test module, or ``tests/integration/conftest.py``
for the whole suite)::

    from triton_server import triton_repository, triton_server, triton_url  # noqa: F401

The server is shared by the whole session, even when both a test module and the
conftest import these fixtures: the first fixture to ask starts it, and that one
stops it at the end. Without the installation that ``scripts/test_deps.sh``
lays out, the tests that need Triton are skipped, or fail under CI.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import patience
from medsam2_export.triton_cpu import TritonInstall, TritonPorts, TritonProcess, write_cpu_repository

THREADS = 2
"""ONNX Runtime threads per Triton model: this machine's two cores."""
START_TIMEOUT_S = patience.SERVER_START_S

_shared: dict[tuple[str, str], object] = {}


def require_triton() -> TritonInstall:
    """The Triton installation and tritonclient, or skip (fail under CI, where a skip would hide a broken set-up)."""
    install = TritonInstall()
    problems = [f"{p} is missing" for p in install.missing()]
    try:
        import tritonclient.grpc  # noqa: F401
    except ImportError as exc:
        problems.append(f"tritonclient[grpc] cannot be imported ({exc})")
    if problems:
        message = f"Triton is not set up here: {problems[0]}; run scripts/test_deps.sh"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return install


def build_repository(onnx_dir: Path, out_dir: Path, install: TritonInstall) -> Path:
    """Write the CPU repository of ``onnx_dir`` into ``out_dir``."""
    write_cpu_repository(onnx_dir, out_dir, install.env, threads=THREADS)
    return out_dir


@contextlib.contextmanager
def triton_process(repository: Path, ports: TritonPorts | None = None) -> Iterator[TritonProcess]:
    """Start ``tritonserver`` on ``repository`` (free loopback ports unless given), wait until ready, always stop it."""
    server = TritonProcess(repository, require_triton(), ports=ports)
    try:
        server.start(START_TIMEOUT_S)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def triton_repository(graphs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CPU model repository of the ``present`` graphs, built once per session."""
    install = require_triton()
    key = ("repository", str(graphs["present"]))
    if key not in _shared:
        _shared[key] = build_repository(graphs["present"], tmp_path_factory.mktemp("triton") / "repository", install)
    return _shared[key]  # type: ignore[return-value]


@pytest.fixture(scope="session")
def triton_server(triton_repository: Path) -> Iterator[TritonProcess]:
    """A running Triton serving ``triton_repository``, for the whole session."""
    key = ("server", str(triton_repository))
    existing = _shared.get(key)
    if isinstance(existing, TritonProcess) and existing.running:
        yield existing
        return
    with triton_process(triton_repository) as server:
        _shared[key] = server
        try:
            yield server
        finally:
            _shared.pop(key, None)


@pytest.fixture(scope="session")
def triton_url(triton_server: TritonProcess) -> str:
    """The session Triton's gRPC address, ``127.0.0.1:PORT``."""
    return triton_server.url


def model_counts(url: str, model: str) -> tuple[int, int]:
    """Triton's own statistics for ``model`` (all versions): (inferences, executions).

    An inference is one batch item; an execution is one run of the model, on however many items the dynamic
    batcher merged. Both only grow, so tests compare them before and after.
    """
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        stats = client.get_inference_statistics(model_name=model, as_json=True)
    finally:
        client.close()
    entries = stats.get("model_stats", [])
    return (
        sum(int(e.get("inference_count", 0)) for e in entries),
        sum(int(e.get("execution_count", 0)) for e in entries),
    )
