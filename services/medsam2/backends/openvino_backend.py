"""The stage graphs in OpenVINO, in this process, on the CPU: fp32, or bf16 where the CPU computes it natively.

OpenVINO reads the same ONNX files as ONNX Runtime. In fp32 it matches ONNX Runtime to about 1e-5; with
``INFERENCE_PRECISION_HINT=bf16`` it runs matmuls and convolutions in bfloat16 (AVX-512 BF16 or AMX), about
three times faster for the image encoder on this project's machines. bf16 is refused on CPUs without native
bf16, where OpenVINO would silently fall back to fp32 and the name would lie.
``mixed`` keeps the small graphs that decide masks and memories in fp32 (see ``BF16_STAGES_OF_MIXED``).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from medsam2.backends.embedded import EmbeddedBackend
from medsam2.backends.onnxruntime_backend import locate_graph
from medsam2.errors import BackendUnavailable, InvalidInput
from medsam2.graphs import GRAPHS, Stage

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "mixed")
"""Compute precisions this backend offers: ``mixed`` is bf16 in ``BF16_STAGES_OF_MIXED`` and fp32 elsewhere."""

BF16_STAGES_OF_MIXED = frozenset({Stage.IMAGE_ENCODER, Stage.MEMORY_ATTENTION})
"""The stages ``mixed`` runs in bf16: about 95% of a slice's FLOPs. The SAM heads and the memory encoder stay
fp32: they are cheap, and they decide the mask and the memory, so bf16 there moved masks the most. Measured on
the parity volume (16 slices) with the present-biased checkpoint, mask Dice vs fp32: ``mixed`` 0.996 with hole
filling off and 0.994 with it on; every stage in bf16 0.991 and 0.987."""

_CAPABILITY = {"fp32": "FP32", "bf16": "BF16", "mixed": "BF16"}
"""The OPTIMIZATION_CAPABILITIES entry of the CPU plug-in that each precision needs."""


def _core() -> Any:
    try:
        import openvino
    except ImportError as exc:
        raise BackendUnavailable("openvino is not installed: pip install 'medsam2-serving[openvino]'") from exc
    return openvino.Core()


def cpu_capabilities() -> list[str]:
    """OpenVINO's OPTIMIZATION_CAPABILITIES of this CPU (e.g. ``['BF16', 'FP32', 'INT8', ...]``)."""
    return list(_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def check_precision(precision: str, capabilities: list[str] | None = None) -> None:
    """Raise ``BackendUnavailable`` if this CPU cannot compute ``precision`` natively (``InvalidInput`` if unknown)."""
    if precision not in PRECISIONS:
        raise InvalidInput(f"OpenVINO precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    capabilities = cpu_capabilities() if capabilities is None else capabilities
    if _CAPABILITY[precision] not in capabilities:
        raise BackendUnavailable(
            f"this CPU cannot run {precision} natively (OpenVINO reports {', '.join(capabilities) or 'nothing'}; "
            f"{precision} needs bf16 (AVX-512 BF16 or AMX)): use --precision fp32"
        )


def stage_precision(precision: str, stage: Stage) -> str:
    """The precision one stage graph is compiled in (``fp32`` or ``bf16``) under a backend ``precision``."""
    if precision == "mixed":
        return "bf16" if stage in BF16_STAGES_OF_MIXED else "fp32"
    return precision


def compile_config(precision: str, threads: int) -> dict[str, Any]:
    """The CPU plug-in's settings for one graph: latency-bound single requests, the precision, the threads."""
    return {
        "INFERENCE_NUM_THREADS": threads or (os.cpu_count() or 1),
        "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
        "PERFORMANCE_HINT": "LATENCY",
    }


class OpenVinoBackend(EmbeddedBackend):
    """Runs each stage graph compiled by OpenVINO's CPU plug-in, compiled on first use."""

    def __init__(
        self, graphs_dir: Path, *, precision: str = "fp32", threads: int = 0, version: int | None = None
    ) -> None:
        self._core = _core()
        check_precision(precision, list(self._core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")))
        self._graphs_dir = Path(graphs_dir)
        self.version = version
        """The model repository version these graphs come from (None: a flat folder or version 1)."""
        locate_graph(self._graphs_dir, Stage.IMAGE_ENCODER, version=version)  # fail early on a wrong folder
        self.precision = precision
        """The compute precision of matmuls and convolutions (``fp32``, ``bf16`` or ``mixed``)."""
        self.name = "openvino" if precision == "fp32" else f"openvino-{precision}"
        self._threads = threads
        self._requests: dict[Stage, tuple[threading.Lock, Any]] = {}
        self._compile_lock = threading.Lock()

    def run(self, stage: Stage, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one stage graph."""
        self.check_call(stage, inputs)
        lock, request = self._request(stage)
        feeds = {t.name: np.ascontiguousarray(inputs[t.name]) for t in GRAPHS[stage].inputs}
        # One infer request per graph: a request is not re-entrant, so concurrent calls of one stage take turns.
        with lock:
            request.infer(feeds)
            return {t.name: np.array(request.get_tensor(t.name).data, copy=True) for t in GRAPHS[stage].outputs}

    def _request(self, stage: Stage) -> tuple[threading.Lock, Any]:
        with self._compile_lock:  # compile each graph once, even when the first calls race
            entry = self._requests.get(stage)
            if entry is None:
                path = locate_graph(self._graphs_dir, stage, version=self.version)
                config = compile_config(stage_precision(self.precision, stage), self._threads)
                compiled = self._core.compile_model(self._core.read_model(str(path)), "CPU", config)
                entry = self._requests[stage] = (threading.Lock(), compiled.create_infer_request())
            return entry

    def close(self) -> None:
        """Drop the compiled graphs."""
        self._requests.clear()
