"""The embedded default: the stage graphs in ONNX Runtime, in this process, on the CPU."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from medsam2.backends.embedded import EmbeddedBackend
from medsam2.errors import BackendUnavailable, NotFound
from medsam2.graphs import GRAPHS, Stage

log = logging.getLogger(__name__)

_pool_lock = threading.Lock()
_pool_threads: int | None = None


def _shared_thread_pool(ort, threads: int) -> bool:  # noqa: ANN001 - the onnxruntime module
    """Use one process-wide intra-op pool for every session; returns False if this runtime cannot.

    With a pool per session, each of the five graphs' pools spins after its run and steals
    the cores from the next graph: measured here, a shared pool is 10-25% faster per slice.
    """
    global _pool_threads
    state = getattr(getattr(ort, "capi", None), "onnxruntime_pybind11_state", None)
    setter = getattr(state, "set_global_thread_pool_sizes", None)
    if setter is None:
        return False
    wanted = threads or (os.cpu_count() or 1)
    with _pool_lock:
        if _pool_threads is None:
            try:
                setter(wanted, 1)
            except Exception:  # the environment already exists (another library made a session first)
                return False
            _pool_threads = wanted
        elif _pool_threads != wanted:
            log.warning(
                "ONNX Runtime's shared pool already has %d threads; ignoring the request for %d", _pool_threads, wanted
            )
    return True


def locate_graph(folder: Path, stage: Stage, *, version: int | None = None) -> Path:
    """A stage's ONNX file in a folder of ``<stage>.onnx`` files or in a Triton model repository.

    ``version`` picks a numbered version of a repository; without it, the flat file or version 1.
    """
    folder = Path(folder)
    if version is not None:
        candidates: tuple[Path, ...] = (folder / stage.value / str(version) / "model.onnx",)
    else:
        candidates = (folder / f"{stage.value}.onnx", folder / stage.value / "1" / "model.onnx")
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise NotFound(
        f"no ONNX graph for {stage.value} in {folder} (looked for {', '.join(str(c.relative_to(folder)) for c in candidates)})"  # noqa: E501
    )


def make_session(path: Path | bytes, threads: int = 0):  # noqa: ANN201 - onnxruntime.InferenceSession
    """An ONNX Runtime CPU session (of a file, or a serialized model) on the process's shared thread pool (or,
    failing that, a non-spinning own one)."""
    import onnxruntime

    opts = onnxruntime.SessionOptions()
    if _shared_thread_pool(onnxruntime, threads):
        opts.use_per_session_threads = False
    else:
        # Separate pools must not spin, or they starve each other on a small machine.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    model = path if isinstance(path, bytes) else str(path)
    return onnxruntime.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])


class OnnxRuntimeBackend(EmbeddedBackend):
    """Runs each stage graph with an ONNX Runtime CPU session, created on first use."""

    name = "onnxruntime"
    precision = "fp32"
    """The graphs' own precision: ONNX Runtime's CPU provider runs them as exported."""

    def __init__(self, graphs_dir: Path, threads: int = 0, *, version: int | None = None) -> None:
        try:
            import onnxruntime  # noqa: F401 - a clear error here beats one at the first call
        except ImportError as exc:  # pragma: no cover - onnxruntime is a base dependency
            raise BackendUnavailable("onnxruntime is not installed") from exc
        self._graphs_dir = Path(graphs_dir)
        self.version = version
        """The model repository version these graphs come from (None: a flat folder or version 1)."""
        locate_graph(self._graphs_dir, Stage.IMAGE_ENCODER, version=version)  # fail early on a wrong folder
        self._threads = threads
        self._sessions: dict[Stage, object] = {}
        self._session_lock = threading.Lock()

    def run(self, stage: Stage, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one stage graph."""
        self.check_call(stage, inputs)
        session = self._session(stage)
        names = [t.name for t in GRAPHS[stage].outputs]
        feeds = {t.name: inputs[t.name] for t in GRAPHS[stage].inputs}
        return dict(zip(names, session.run(names, feeds), strict=False))

    def _session(self, stage: Stage):  # noqa: ANN202 - onnxruntime.InferenceSession
        with self._session_lock:  # runs may come from several threads; create each session once
            return self._sessions.get(stage) or self._create_session(stage)

    def _create_session(self, stage: Stage):  # noqa: ANN202 - onnxruntime.InferenceSession
        session = make_session(locate_graph(self._graphs_dir, stage, version=self.version), self._threads)
        self._sessions[stage] = session
        return session

    def close(self) -> None:
        """Drop the sessions."""
        self._sessions.clear()
