"""Pick the in-process backend and its precision from the settings (``--backend``/``--precision``)."""

from __future__ import annotations

import logging
from pathlib import Path

from medsam2.engine.backend import StageBackend
from medsam2.errors import BackendUnavailable, ConfigError
from medsam2.settings import EMBEDDED_BACKENDS

log = logging.getLogger(__name__)

OPENVINO_DEFAULT_PRECISION = "mixed"
"""OpenVINO's ``auto`` precision where the CPU has native bf16. ``mixed`` (bf16 encoder and memory attention)
clears the bar of a mask Dice >= 0.99 against fp32 on the parity volume with the present-biased checkpoint with
room to spare (0.996; 0.994 with hole filling on) and is as fast as full ``bf16``, which only just clears it
(0.991) and falls below it with hole filling on (0.987), so full bf16 is an option, not the default. Figures are
in docs/performance.md, ``medsam2 bench`` measures them again on every run, and a test keeps the
default above the bar. Elsewhere ``auto`` is fp32."""


def resolve_precision(backend: str, precision: str) -> str:
    """The concrete precision for ``backend`` (``auto`` becomes the backend's default on this CPU)."""
    if backend not in EMBEDDED_BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(EMBEDDED_BACKENDS)}, got {backend!r}")
    if backend == "onnxruntime":
        if precision not in ("auto", "fp32"):
            raise ConfigError(
                f"ONNX Runtime runs the graphs in fp32 only, not {precision}: "
                "use --backend openvino for reduced precision"
            )
        return "fp32"
    from medsam2.backends.openvino_backend import PRECISIONS, cpu_capabilities

    if precision == "auto":
        capabilities = cpu_capabilities()
        if "BF16" in capabilities:
            return OPENVINO_DEFAULT_PRECISION
        log.info(
            "this CPU has no native %s (OpenVINO reports %s): OpenVINO runs in fp32",
            OPENVINO_DEFAULT_PRECISION,
            ", ".join(capabilities),
        )
        return "fp32"
    if precision not in PRECISIONS:
        raise ConfigError(f"OpenVINO offers {', '.join(PRECISIONS)}, not {precision}")
    return precision


def make_embedded_backend(
    graphs: Path, *, backend: str, precision: str, threads: int = 0, version: int | None = None
) -> StageBackend:
    """The chosen in-process backend over a folder of graphs (``version``: a numbered version of a repository);
    its ``name`` and ``precision`` say what runs."""
    concrete = resolve_precision(backend, precision)
    if backend == "onnxruntime":
        from medsam2.backends.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(graphs, threads=threads, version=version)
    try:
        from medsam2.backends.openvino_backend import OpenVinoBackend
    except ImportError as exc:  # pragma: no cover - the module itself imports openvino lazily
        raise BackendUnavailable(f"the OpenVINO backend cannot be loaded: {exc}") from exc
    return OpenVinoBackend(graphs, precision=concrete, threads=threads, version=version)
