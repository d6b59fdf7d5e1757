"""``medsam2 export``: checkpoint -> ONNX graphs (-> TensorRT engines) -> Triton model repository."""

from __future__ import annotations

import tempfile
from pathlib import Path

from medsam2.errors import ConfigError, OutputNotWritable
from medsam2.graphs import GRAPHS, TRITON_GRAPHS
from medsam2.models.download import file_sha256
from medsam2.models.provenance import ModelProvenance, list_versions, write_provenance
from medsam2.models.versions import next_version
from medsam2_export import model_repository, tensorrt_build
from medsam2_export.model import load_model
from medsam2_export.onnx_export import export_all


def export_repository(
    checkpoint: Path, out_dir: Path, backend: str, max_batch: int = 16, *, version: int | None = None
) -> list[Path]:
    """Write a complete Triton model repository for ``backend`` from ``checkpoint`` as version ``version``.

    Without ``version`` the graphs go to version 1 (replaced if present). An explicit version that already
    exists is refused: a served version is never changed in place. The provenance record (checkpoint sha256,
    and for a fine-tuned checkpoint its base, dataset, steps and seed) goes into the version folder.
    """
    explicit = version is not None
    version = 1 if version is None else version
    if version < 1:
        raise ConfigError(f"--version must be 1 or more, got {version}")
    if explicit and version in list_versions(Path(out_dir)):
        raise OutputNotWritable(
            f"model version {version} already exists in {out_dir} "
            f"(versions {', '.join(map(str, list_versions(Path(out_dir))))}): "
            f"a served version is never overwritten; use --version {next_version(Path(out_dir))}"
        )
    if backend not in model_repository.BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}: choose one of {', '.join(model_repository.BACKENDS)}")
    options = model_repository.RepositoryOptions(max_batch_size=max_batch)
    out_dir = Path(out_dir)
    model_repository.check_output_dir(out_dir)
    if backend == "tensorrt":
        tensorrt_build.import_tensorrt()  # fail before the slow export when TensorRT is not there
    model = load_model(checkpoint)
    provenance = checkpoint_provenance(checkpoint, version)
    with tempfile.TemporaryDirectory(prefix="medsam2-export-") as tmp:
        files = export_all(model, Path(tmp) / "onnx")
        if backend == "tensorrt":
            for stage in TRITON_GRAPHS:  # the wire casts need plans too
                model_repository.write_atomic(
                    tensorrt_build.onnx_path(Path(tmp) / "onnx", stage), model_repository.triton_graph_onnx(stage)
                )
            files = tensorrt_build.build_engines(
                Path(tmp) / "onnx",
                Path(tmp) / "plans",
                max_batch=max_batch,
                opt_batch=min(4, max_batch),
                stages=[*GRAPHS, *TRITON_GRAPHS],
            )
        written = model_repository.write_model_repository(out_dir, backend, files, options, version=version)
        if backend == "tensorrt":
            # The TensorRT that built the plans, for the serving side's check (tensorrt_build.check_plan_version).
            version_file = out_dir / tensorrt_build.PLAN_VERSION_FILE
            model_repository.copy_atomic(Path(tmp) / "plans" / tensorrt_build.PLAN_VERSION_FILE, version_file)
            written.append(version_file)
    written.append(write_provenance(out_dir, provenance))
    return written


def checkpoint_provenance(checkpoint: Path, version: int) -> ModelProvenance:
    """The provenance of a checkpoint file: its sha256, and what a fine-tuned checkpoint records of its making."""
    import torch

    sha256 = file_sha256(Path(checkpoint))
    blob = torch.load(checkpoint, map_location="cpu", weights_only=True)
    made = blob.get("provenance", {}) if isinstance(blob, dict) else {}
    return ModelProvenance(
        version=version,
        checkpoint_sha256=sha256,
        base_checkpoint_sha256=made.get("base_checkpoint_sha256"),
        dataset_sha256=made.get("dataset_sha256"),
        steps=made.get("steps"),
        seed=made.get("seed"),
        untrained=isinstance(blob, dict) and "untrained" in blob,
    )
