"""Triton on a machine without a GPU: a Python-backend variant of the model repository, and a server process.

The ``tritonserver`` of the ``nvidia-pytriton`` wheel has only the Python
backend. ``write_cpu_repository`` therefore writes, per stage graph, a Python
model whose ``model.py`` runs the very same ``model.onnx`` with ONNX Runtime,
under the same names, dims, batch size and dynamic batching as the real
repository, plus the same ``track_step`` ensemble. The models run in their own
small environment (numpy<2 and onnxruntime: the backend's stub returns empty
tensors with numpy 2), which ``scripts/test_deps.sh`` creates under ``.triton/``.

``TritonProcess`` starts and stops such a server on loopback; the tests and the
Triton benchmark use it. Nothing here imports torch or tritonclient.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medsam2.backends.onnxruntime_backend import locate_graph
from medsam2.errors import BackendUnavailable, ConfigError
from medsam2.graphs import GRAPHS, TRITON_ENSEMBLES, TRITON_GRAPHS, GraphSpec
from medsam2_export.model_repository import (
    RepositoryOptions,
    check_output_dir,
    config_fields,
    copy_atomic,
    make_version_dir,
    render_config,
    render_fields,
    triton_graph_onnx,
    write_atomic,
    write_pinned_ensembles,
)
from medsam2_export.triton_cpu_model import THREADS_PARAMETER

CPU_OPTIONS = RepositoryOptions(instance_kind="CPU")
"""The real repository's batching, with CPU instances."""
MODEL_PY = Path(__file__).with_name("triton_cpu_model.py")
"""The Python model every stage runs; copied as ``<stage>/1/model.py``."""
TRITON_HOME_VARIABLE = "MEDSAM2_TRITON_HOME"
MODEL_CONTROL_MODES = ("none", "explicit")
"""``--model-control-mode`` values a ``TritonProcess`` runs with (``explicit`` starts with every model loaded)."""


# ---------------------------------------------------------------------------------------------
# The repository


def cpu_config_fields(
    spec: GraphSpec, env_path: Path | None = None, threads: int = 2, options: RepositoryOptions = CPU_OPTIONS
) -> dict[str, Any]:
    """The Python-backend ``ModelConfig`` of one stage graph: the real one with ``backend: "python"`` on the CPU."""
    if threads < 1:
        raise ConfigError(f"threads must be at least 1, got {threads}")
    real = config_fields(spec, "onnxruntime", options)
    fields: dict[str, Any] = {"name": real["name"], "backend": "python"}
    # Warm-up is left out: ONNX Runtime is ready after initialize(), and a warm-up run would slow every restart.
    fields |= {k: v for k, v in real.items() if k not in ("name", "platform", "model_warmup")}
    parameters = [{"key": THREADS_PARAMETER, "value": {"string_value": str(threads)}}]
    if env_path is not None:
        parameters.append({"key": "EXECUTION_ENV_PATH", "value": {"string_value": str(Path(env_path).resolve())}})
    fields["parameters"] = parameters
    return fields


def check_env(env_path: Path) -> Path:
    """Raise ``ConfigError`` unless ``env_path`` is an unpacked environment the Python backend can activate."""
    env_path = Path(env_path).resolve()
    for needed in ("bin/activate", "bin/python"):
        if not (env_path / needed).exists():
            raise ConfigError(
                f"{env_path} is not a Python environment for Triton's Python backend (no {needed}); "
                "create it with scripts/test_deps.sh"
            )
    return env_path


def write_cpu_repository(
    onnx_dir: Path,
    out_dir: Path,
    env_path: Path | None = None,
    *,
    threads: int = 2,
    options: RepositoryOptions = CPU_OPTIONS,
    version: int | None = None,
) -> list[Path]:
    """Write the Python-backend repository for the graphs in ``onnx_dir`` (``<stage>.onnx`` files or a repository).

    Without ``version`` the graphs go to version 1, as one unversioned model; with it, to version ``version``
    beside the versions already there, with the ensembles pinned to it (as ``medsam2 export --version`` writes).
    """
    if options.instance_kind != "CPU":
        raise ConfigError("the Python-backend repository runs on the CPU: instance_kind must be 'CPU'")
    if env_path is not None:
        env_path = check_env(env_path)
    sources = {stage: locate_graph(Path(onnx_dir), stage) for stage in GRAPHS}
    configs = {
        stage: render_fields(cpu_config_fields(spec, env_path, threads, options))
        for stage, spec in {**GRAPHS, **TRITON_GRAPHS}.items()
    }
    configs |= {stage: render_config(spec, "onnxruntime", options) for stage, spec in TRITON_ENSEMBLES.items()}
    out_dir = Path(out_dir)
    check_output_dir(out_dir)
    model_py = MODEL_PY.read_bytes()
    folder = str(version or 1)
    written: list[Path] = []
    for stage, text in configs.items():
        model_dir = out_dir / stage.value
        write_atomic(model_dir / "config.pbtxt", text.encode("utf-8"))
        written.append(model_dir / "config.pbtxt")
        if stage in TRITON_ENSEMBLES:
            make_version_dir(model_dir)
            continue
        if stage in TRITON_GRAPHS:
            write_atomic(model_dir / folder / "model.onnx", triton_graph_onnx(stage))
        else:
            copy_atomic(sources[stage], model_dir / folder / "model.onnx")
        write_atomic(model_dir / folder / "model.py", model_py)
        written += [model_dir / folder / "model.onnx", model_dir / folder / "model.py"]
    if version is not None:
        written += write_pinned_ensembles(out_dir, version, options)
    return written


# ---------------------------------------------------------------------------------------------
# The installation (laid out by scripts/test_deps.sh)


def default_triton_home() -> Path:
    """``$MEDSAM2_TRITON_HOME``, else ``.triton/`` in the repository root."""
    configured = os.environ.get(TRITON_HOME_VARIABLE)
    return Path(configured) if configured else Path(__file__).resolve().parents[2] / ".triton"


@dataclass(frozen=True, slots=True)
class TritonInstall:
    """Where ``scripts/test_deps.sh`` put the server, its Python backend and the models' environment."""

    home: Path = field(default_factory=default_triton_home)

    @property
    def server(self) -> Path:
        """The ``tritonserver`` executable."""
        return self.home / "site" / "pytriton" / "tritonserver" / "bin" / "tritonserver"

    @property
    def libs(self) -> Path:
        """The wheel's bundled shared libraries."""
        return self.home / "site" / "nvidia_pytriton.libs"

    @property
    def backends(self) -> Path:
        """``--backend-directory``: ``python/`` with the backend library and the 3.11 stub."""
        return self.home / "backends"

    @property
    def caches(self) -> Path:
        """``--cache-directory``."""
        return self.home / "caches"

    @property
    def env(self) -> Path:
        """The models' environment (numpy<2, onnxruntime)."""
        return self.home / "env"

    def missing(self) -> list[Path]:
        """Files that must exist for a server to start; empty when the installation is complete."""
        needed = [
            self.server,
            self.backends / "python" / "libtriton_python.so",
            self.backends / "python" / "triton_python_backend_stub",
            self.env / "bin" / "activate",
        ]
        return [p for p in needed if not p.exists()]


# ---------------------------------------------------------------------------------------------
# The server


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass(frozen=True, slots=True)
class TritonPorts:
    """The server's three listening ports."""

    grpc: int
    http: int
    metrics: int

    @classmethod
    def free(cls, host: str = "127.0.0.1") -> TritonPorts:
        """Three distinct free ports."""
        ports: set[int] = set()
        while len(ports) < 3:
            ports.add(free_port(host))
        grpc, http, metrics = sorted(ports)
        return cls(grpc, http, metrics)


class TritonProcess:
    """A ``tritonserver`` on loopback serving ``repository``; stopped (terminate, then kill) by ``stop``."""

    def __init__(
        self,
        repository: Path,
        install: TritonInstall | None = None,
        *,
        ports: TritonPorts | None = None,
        host: str = "127.0.0.1",
        log_path: Path | None = None,
        model_control: str = "none",
    ) -> None:
        if model_control not in MODEL_CONTROL_MODES:
            raise ConfigError(f"model_control must be one of {', '.join(MODEL_CONTROL_MODES)}, got {model_control!r}")
        self.model_control = model_control
        """Triton's ``--model-control-mode``: ``explicit`` lets the service load new model versions."""
        self.repository = Path(repository)
        self.install = install or TritonInstall()
        self.host = host
        self.ports = ports or TritonPorts.free(host)
        self.log_path = Path(log_path) if log_path else self.repository.parent / f"tritonserver-{self.ports.grpc}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        # Each server gets its own shared-memory names, so a killed one cannot collide with the next.
        self._shm_prefix = f"medsam2_triton_{os.getpid()}_{self.ports.grpc}_"

    @property
    def url(self) -> str:
        """The gRPC address, ``host:port``, as tritonclient takes it."""
        return f"{self.host}:{self.ports.grpc}"

    @property
    def http_url(self) -> str:
        """The HTTP endpoint's base URL."""
        return f"http://{self.host}:{self.ports.http}"

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def command(self) -> list[str]:
        """The ``tritonserver`` command line."""
        p = self.ports
        return [
            str(self.install.server),
            f"--model-repository={self.repository}",
            f"--backend-directory={self.install.backends}",
            f"--cache-directory={self.install.caches}",
            f"--grpc-address={self.host}",
            f"--grpc-port={p.grpc}",
            f"--http-address={self.host}",
            f"--http-port={p.http}",
            f"--metrics-address={self.host}",
            f"--metrics-port={p.metrics}",
            "--allow-gpu-metrics=false",
            "--disable-auto-complete-config",
            f"--model-control-mode={self.model_control}",
            *(["--load-model=*"] if self.model_control == "explicit" else []),
            "--strict-readiness=true",
            "--exit-timeout-secs=5",
            "--log-verbose=0",
            f"--backend-config=python,shm-region-prefix-name={self._shm_prefix}",
            # Large enough for a batch of features without growing the region on every call.
            "--backend-config=python,shm-default-byte-size=16777216",
            "--backend-config=python,shm-growth-byte-size=16777216",
        ]

    def environment(self) -> dict[str, str]:
        """The server's environment: its bundled libraries found, the caller's Python settings left out."""
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        # env/lib holds a link to the libpython the models' environment was made from, which the stub needs.
        paths = [str(self.install.libs), str(self.install.env / "lib"), env.get("LD_LIBRARY_PATH", "")]
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in paths if p)
        # numpy's OpenBLAS would start a thread per core in every model's stub; ONNX Runtime does the math.
        env.setdefault("OPENBLAS_NUM_THREADS", "1")
        return env

    def start(self, timeout_s: float = 90.0) -> None:
        """Start the server and wait until it and every model are ready; ``BackendUnavailable`` if not in time."""
        if self.running:
            return
        missing = self.install.missing()
        if missing:
            raise BackendUnavailable(f"Triton is not installed ({missing[0]} is missing): run scripts/test_deps.sh")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            # A session of its own, so that stop() can end the server's model stubs with it.
            self._proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.environment(),
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.running:
                self._cleanup()
                raise BackendUnavailable(f"tritonserver exited during start-up:\n{self.log_tail()}")
            if self.is_ready():
                return
            time.sleep(0.1)
        self.stop()
        raise BackendUnavailable(f"tritonserver was not ready within {timeout_s:.0f} s:\n{self.log_tail()}")

    def is_ready(self) -> bool:
        """Whether ``/v2/health/ready`` answers 200 (the server and, with strict readiness, every model)."""
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=1.0) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def kill(self) -> None:
        """End the server and its stubs at once (SIGKILL), as a crash would."""
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
        self._cleanup()

    def stop(self, grace_s: float = 10.0) -> None:
        """Terminate the server, kill it (and its stubs) if it has not exited within ``grace_s``."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def _cleanup(self) -> None:
        if self._proc is not None:
            # Stubs outlive a killed server by up to their health-check interval; they are in its session.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signal.SIGKILL)
        self._proc = None
        shm = Path("/dev/shm")
        if shm.is_dir():
            for leftover in shm.glob(f"{self._shm_prefix}*"):
                with contextlib.suppress(OSError):
                    leftover.unlink()

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server's log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> TritonProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def serve_cpu_repository(
    onnx_dir: Path,
    work_dir: Path,
    install: TritonInstall | None = None,
    *,
    threads: int = 2,
    ports: TritonPorts | None = None,
    timeout_s: float = 90.0,
    options: RepositoryOptions = CPU_OPTIONS,
) -> Iterator[TritonProcess]:
    """Build the CPU repository of ``onnx_dir`` under ``work_dir``, serve it, and always stop the server after."""
    install = install or TritonInstall()
    repo = Path(work_dir) / "repository"
    if repo.exists():
        shutil.rmtree(repo)
    write_cpu_repository(onnx_dir, repo, install.env, threads=threads, options=options)
    server = TritonProcess(repo, install, ports=ports, log_path=Path(work_dir) / "tritonserver.log")
    try:
        server.start(timeout_s)
        yield server
    finally:
        server.stop()
