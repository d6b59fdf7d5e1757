"""``medsam2 export``: checkpoint -> ONNX graphs (-> TensorRT engines) -> Triton model repository."""

from __future__ import annotations

import tempfile
from pathlib import Path

from medsam2.errors import ConfigError
from medsam2.graphs import GRAPHS, TRITON_GRAPHS
from medsam2_export import model_repository, tensorrt_build
from medsam2_export.model import load_model
from medsam2_export.onnx_export import export_all


def export_repository(checkpoint: Path, out_dir: Path, backend: str, max_batch: int = 16) -> list[Path]:
    """Write a complete Triton model repository for ``backend`` from ``checkpoint``."""
    if backend not in model_repository.BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}: choose one of {', '.join(model_repository.BACKENDS)}")
    options = model_repository.RepositoryOptions(max_batch_size=max_batch)
    out_dir = Path(out_dir)
    model_repository.check_output_dir(out_dir)
    if backend == "tensorrt":
        tensorrt_build.import_tensorrt()  # fail before the slow export when TensorRT is not there
    model = load_model(checkpoint)
    with tempfile.TemporaryDirectory(prefix="medsam2-export-") as tmp:
        files = export_all(model, Path(tmp) / "onnx")
        if backend == "tensorrt":
            for stage in TRITON_GRAPHS:  # the wire casts need plans too
                model_repository.write_atomic(tensorrt_build.onnx_path(Path(tmp) / "onnx", stage),
                                              model_repository.triton_graph_onnx(stage))
            files = tensorrt_build.build_engines(Path(tmp) / "onnx", Path(tmp) / "plans", max_batch=max_batch,
                                                 opt_batch=min(4, max_batch), stages=[*GRAPHS, *TRITON_GRAPHS])
        written = model_repository.write_model_repository(out_dir, backend, files, options)
        if backend == "tensorrt":
            # The TensorRT that built the plans, for the serving side's check (tensorrt_build.check_plan_version).
            version_file = out_dir / tensorrt_build.PLAN_VERSION_FILE
            model_repository.copy_atomic(Path(tmp) / "plans" / tensorrt_build.PLAN_VERSION_FILE, version_file)
            written.append(version_file)
        return written
