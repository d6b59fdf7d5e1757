"""The embedded default: the stage graphs in ONNX Runtime, in this process, on the CPU."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from medsam2.engine.backend import check_inputs
from medsam2.errors import BackendUnavailable, NotFound
from medsam2.graphs import GRAPHS, Stage


def locate_graph(folder: Path, stage: Stage) -> Path:
    """A stage's ONNX file in a folder of ``<stage>.onnx`` files or in a Triton model repository."""
    folder = Path(folder)
    for candidate in (folder / f"{stage.value}.onnx", folder / stage.value / "1" / "model.onnx"):
        if candidate.is_file():
            return candidate
    raise NotFound(
        f"no ONNX graph for {stage.value} in {folder} (looked for {stage.value}.onnx and {stage.value}/1/model.onnx)"
    )


class OnnxRuntimeBackend:
    """Runs each stage graph with an ONNX Runtime CPU session, created on first use."""

    name = "onnxruntime"

    def __init__(self, graphs_dir: Path, threads: int = 0) -> None:
        try:
            import onnxruntime
        except ImportError as exc:  # pragma: no cover - onnxruntime is a base dependency
            raise BackendUnavailable("onnxruntime is not installed") from exc
        self._ort = onnxruntime
        self._paths = {stage: locate_graph(graphs_dir, stage) for stage in Stage}
        self._threads = threads
        self._sessions: dict[Stage, object] = {}

    def run(self, stage: Stage, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one stage graph."""
        check_inputs(stage, inputs)
        session = self._session(stage)
        names = [t.name for t in GRAPHS[stage].outputs]
        feeds = {t.name: inputs[t.name] for t in GRAPHS[stage].inputs}
        return dict(zip(names, session.run(names, feeds)))

    def _session(self, stage: Stage):  # noqa: ANN202 - onnxruntime.InferenceSession
        session = self._sessions.get(stage)
        if session is None:
            opts = self._ort.SessionOptions()
            if self._threads:
                opts.intra_op_num_threads = self._threads
                opts.inter_op_num_threads = 1
            opts.log_severity_level = 3
            session = self._ort.InferenceSession(str(self._paths[stage]), sess_options=opts,
                                                 providers=["CPUExecutionProvider"])
            self._sessions[stage] = session
        return session

    def close(self) -> None:
        """Drop the sessions."""
        self._sessions.clear()
