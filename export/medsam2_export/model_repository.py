"""Write a Triton model repository for the stage graphs: ``config.pbtxt`` per stage plus model binaries.

The configs come from the contract in ``medsam2.graphs`` alone, so the copies
committed under ``model_repository/`` can be regenerated (and checked for
freshness) without torch, onnx or tritonclient.  Besides one model per stage
graph, the repository holds the casts of ``graphs.TRITON_GRAPHS`` (memories
cross the network in bfloat16) and the ensembles of ``graphs.TRITON_ENSEMBLES``
(the ``track_step``), wired as ``graphs.TRITON_TRACK_STEP_WIRING`` says.

Model versions: every graph keeps all its numbered version folders loaded (``version_policy: all``), so a
session pinned to an older version, or a roll-back, finds it in Triton; a version is retired by deleting its
folders. Each exported version N also gets ``track_step_vN``, the ensemble with every step at version N
(``medsam2.graphs.pinned_ensemble_name``); ``track_step`` itself runs the newest.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medsam2 import graphs
from medsam2.errors import ConfigError, OutputNotWritable
from medsam2.graphs import GRAPHS, TRITON_ENSEMBLES, TRITON_GRAPHS, GraphSpec, Stage, TensorSpec, pinned_ensemble_name
from medsam2.io.atomic import write_atomic as atomic_writer
from medsam2.io.atomic import write_bytes_atomic

BACKENDS = ("onnxruntime", "tensorrt")
"""Backends a repository can be written for, in the order the committed copies are generated."""

_PLATFORM = {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}
_MODEL_FILE = {"onnxruntime": "model.onnx", "tensorrt": "model.plan"}
_TRITON_TYPE = {
    np.dtype(np.uint8): "TYPE_UINT8",
    np.dtype(np.float32): "TYPE_FP32",
    np.dtype(np.int32): "TYPE_INT32",
    np.dtype(np.int64): "TYPE_INT64",
    np.dtype(graphs.BF16): "TYPE_BF16",
}
_INSTANCE_KINDS = ("GPU", "CPU")
_HEADER = (
    "# Generated from services/medsam2/graphs.py by medsam2_export.model_repository; do not edit by hand.\n"
    "# Regenerate with: PYTHONPATH=services:export python -m medsam2_export.model_repository\n"
)
_WARMUP_NAME = "zero_inputs"

Wiring = tuple[tuple[Stage, Mapping[str, str], Mapping[str, str]], ...]
ENSEMBLE_WIRING: dict[Stage, Wiring] = {Stage.TRACK_STEP: graphs.TRITON_TRACK_STEP_WIRING}
"""How each ensemble of ``graphs.TRITON_ENSEMBLES`` is composed of stage graphs and ``graphs.TRITON_GRAPHS``."""
STEP_GRAPHS: dict[Stage, GraphSpec] = {**GRAPHS, **TRITON_GRAPHS}
"""Every model an ensemble step can run: the stage graphs and the wire-dtype casts."""


@dataclass(frozen=True, slots=True)
class RepositoryOptions:
    """Batching and placement settings written into every stage's ``config.pbtxt``."""

    max_batch_size: int = 16
    preferred_batch_sizes: tuple[int, ...] = ()
    """None by default, as Triton advises for most models: the scheduler then sends the largest batch it has."""
    max_queue_delay_us: int = 200
    """Wait at most this long for more requests; per step, so a five-step ensemble adds up to five times this."""
    instance_count: int = 1
    instance_kind: str = "GPU"


class _Enum(str):
    """A protobuf enum value: rendered bare, not quoted."""


# ---------------------------------------------------------------------------------------------
# Rendering


def triton_dims(tensor: TensorSpec, batched: bool = True) -> tuple[int, ...]:
    """Dims of ``tensor`` as Triton declares them: without the implicit batch axis, ``[1]`` for a batch-only tensor.

    In a model that is not batched (``max_batch_size: 0``) the dims are the full shape, a per-item scalar
    ``[-1, 1]``: the same full shape a batched model's ``[1]`` has, so tensors connect across the two kinds.
    """
    dims = tensor.shape[1:]
    # Triton rejects empty dims, so a per-item scalar is declared [1] and reshaped to [] for the model.
    dims = dims if dims else (1,)
    return (tensor.shape[0], *dims) if not batched else dims


def warmup_dims(tensor: TensorSpec, batched: bool = True) -> tuple[int, ...]:
    """Concrete warm-up dims of ``tensor``: memory slots at the trained count (the TensorRT profile's opt), grey
    images, batch 1."""
    dynamic = min(graphs.IMAGE_CHANNELS) if tensor.name == "image" else graphs.NUM_MASKMEM
    dims = triton_dims(tensor, batched)
    return tuple(1 if i == 0 and not batched else (dynamic if d < 0 else d) for i, d in enumerate(dims))


def _tensor_entry(tensor: TensorSpec, reshape: bool = True, batched: bool = True) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": tensor.name,
        "data_type": _triton_type(tensor),
        "dims": list(triton_dims(tensor, batched)),
    }
    if reshape and batched and len(tensor.shape) == 1:
        entry["reshape"] = {"shape": []}
    return entry


def _triton_type(tensor: TensorSpec) -> _Enum:
    try:
        return _Enum(_TRITON_TYPE[np.dtype(tensor.dtype)])
    except KeyError:
        raise ConfigError(f"{tensor.name}: dtype {np.dtype(tensor.dtype).name} has no Triton type mapping") from None


def _warmup(spec: GraphSpec) -> dict[str, Any]:
    inputs = [
        {
            "key": t.name,
            "value": {"data_type": _triton_type(t), "dims": list(warmup_dims(t, spec.batched)), "zero_data": True},
        }
        for t in spec.inputs
    ]
    # A model that is not batched takes batch_size 1 and the full dims.
    return {"name": _WARMUP_NAME, "batch_size": 1, "inputs": inputs}


def config_fields(spec: GraphSpec, backend: str, options: RepositoryOptions = RepositoryOptions()) -> dict[str, Any]:
    """The ``ModelConfig`` of one stage as nested dicts and lists, in the order they are written."""
    _check_backend(backend)
    _check_options(options, backend)
    fields: dict[str, Any] = {
        "name": spec.stage.value,
        "platform": _PLATFORM[backend],
        # A graph that is not batched (feature_broadcast) is a copy: it has nothing to gain from batching.
        "max_batch_size": options.max_batch_size if spec.batched else 0,
        # Every version folder stays loaded: sessions keep the version they opened with, and a roll-back is instant.
        "version_policy": {"all": {}},
        "input": [_tensor_entry(t, batched=spec.batched) for t in spec.inputs],
        "output": [_tensor_entry(t, batched=spec.batched) for t in spec.outputs],
        "dynamic_batching": _dynamic_batching(options),
        "instance_group": [{"count": options.instance_count, "kind": _Enum(f"KIND_{options.instance_kind}")}],
        "model_warmup": [_warmup(spec)],
    }
    if not spec.batched:
        del fields["dynamic_batching"]
    return fields


def _dynamic_batching(options: RepositoryOptions) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if options.preferred_batch_sizes:
        fields["preferred_batch_size"] = list(options.preferred_batch_sizes)
    fields["max_queue_delay_microseconds"] = options.max_queue_delay_us
    return fields


def render_config(spec: GraphSpec, backend: str, options: RepositoryOptions = RepositoryOptions()) -> str:
    """The ``config.pbtxt`` text of one stage graph or ensemble."""
    if spec.stage in TRITON_ENSEMBLES:
        _check_backend(backend)
        _check_options(options, backend)
        return render_fields(ensemble_config_fields(spec, options))
    return render_fields(config_fields(spec, backend, options))


def write_pinned_ensembles(out_dir: Path, version: int, options: RepositoryOptions = RepositoryOptions()) -> list[Path]:
    """Write ``<ensemble>_v<version>/config.pbtxt`` (steps at ``version``) and its version folder, per ensemble."""
    written = []
    for spec in TRITON_ENSEMBLES.values():
        fields = ensemble_config_fields(spec, options, version=version)
        model_dir = Path(out_dir) / fields["name"]
        write_atomic(model_dir / "config.pbtxt", render_fields(fields).encode("utf-8"))
        make_version_dir(model_dir)
        written.append(model_dir / "config.pbtxt")
    return written


def render_fields(fields: Mapping[str, Any]) -> str:
    """``config.pbtxt`` text, with the generated-file header, for fields as ``config_fields`` returns them."""
    return _HEADER + "\n".join(_render_fields(fields, 0)) + "\n"


def ensemble_config_fields(
    spec: GraphSpec, options: RepositoryOptions = RepositoryOptions(), *, version: int | None = None
) -> dict[str, Any]:
    """The ``ModelConfig`` of an ensemble of ``graphs.TRITON_ENSEMBLES``; the same for every backend.

    ``version`` pins every step to that model version (the ensemble is then ``pinned_ensemble_name``); without
    it the steps run the newest version.
    """
    wiring = ENSEMBLE_WIRING.get(spec.stage)
    if wiring is None:
        raise ConfigError(f"no wiring for ensemble {spec.stage.value}")
    check_wiring(spec, wiring)
    return {
        "name": spec.stage.value if version is None else pinned_ensemble_name(spec.stage.value, version),
        "platform": "ensemble",
        # Triton refuses an ensemble whose batch exceeds a step's; every step has options.max_batch_size. An
        # ensemble that is not batched (track_step: one image for all its rows) declares full shapes instead, which
        # Triton connects to the batched steps by their full shapes.
        "max_batch_size": options.max_batch_size if spec.batched else 0,
        # Per-item scalars stay [1] here, without the steps' reshape: Triton checks the ensemble's tensors against
        # the steps' declared dims, and a reshaped [] would not match their [1].
        "input": [_tensor_entry(t, reshape=False, batched=spec.batched) for t in spec.inputs],
        "output": [_tensor_entry(t, reshape=False, batched=spec.batched) for t in spec.outputs],
        "ensemble_scheduling": {
            "step": [
                {
                    "model_name": stage.value,
                    "model_version": -1 if version is None else version,
                    "input_map": [{"key": k, "value": v} for k, v in inputs.items()],
                    "output_map": [{"key": k, "value": v} for k, v in outputs.items()],
                }
                for stage, inputs, outputs in wiring
            ]
        },
    }


def check_wiring(spec: GraphSpec, wiring: Wiring) -> None:
    """Raise ``ConfigError`` unless ``wiring`` composes stage graphs into exactly ``spec``'s inputs and outputs."""
    name = spec.stage.value
    available = {t.name: t for t in spec.inputs}
    consumed: set[str] = set()
    for stage, inputs, outputs in wiring:
        step = STEP_GRAPHS.get(stage)
        if step is None:
            raise ConfigError(f"{name}: step {stage.value} is not a stage graph")
        if set(inputs) != {t.name for t in step.inputs} or set(outputs) - {t.name for t in step.outputs}:
            raise ConfigError(
                f"{name}: step {stage.value} maps {sorted(inputs)} -> {sorted(outputs)}, "
                f"which does not match its graph's inputs and outputs"
            )
        for port, tensor in inputs.items():
            if tensor not in available:
                raise ConfigError(f"{name}: {stage.value}.{port} reads {tensor!r}, which no earlier step produces")
            _check_same_tensor(name, available[tensor], step.input(port), f"{stage.value}.{port}")
            consumed.add(tensor)
        for port, tensor in outputs.items():
            if tensor in available:
                raise ConfigError(f"{name}: {stage.value}.{port} writes {tensor!r}, which already exists")
            available[tensor] = step.output(port)
    unused = [t.name for t in spec.inputs if t.name not in consumed]
    if unused:
        raise ConfigError(f"{name}: inputs {unused} are not read by any step")
    for t in spec.outputs:
        if t.name not in available:
            raise ConfigError(f"{name}: output {t.name!r} is not produced by any step")
        _check_same_tensor(name, available[t.name], t, f"output {t.name}")


def _check_same_tensor(ensemble: str, have: TensorSpec, want: TensorSpec, where: str) -> None:
    # A fixed axis may feed a dynamic one (the ensemble's one image is a batch of 1 for the encoder), not the reverse.
    same_rank = len(have.shape) == len(want.shape)
    fits = same_rank and all(w < 0 or h == w for h, w in zip(have.shape, want.shape, strict=True))
    if np.dtype(have.dtype) != np.dtype(want.dtype) or not fits:
        raise ConfigError(
            f"{ensemble}: {where} expects {np.dtype(want.dtype).name}{list(want.shape)}, "
            f"gets {have.name} {np.dtype(have.dtype).name}{list(have.shape)}"
        )


def ensemble_intermediate_bytes(stage: Stage = Stage.TRACK_STEP) -> dict[str, int]:
    """Bytes per batch item of every tensor the steps of ensemble ``stage`` produce, memory slots at the trained 7.

    These live in Triton's CUDA memory pool while a request is in flight; what does not fit falls back to pinned
    host memory without a word.
    """
    sizes: dict[str, int] = {}
    for step, _, outputs in ENSEMBLE_WIRING[stage]:
        spec = STEP_GRAPHS[step]
        for port, tensor in outputs.items():
            t = spec.output(port)
            dims = [graphs.NUM_MASKMEM if d < 0 else d for d in t.shape[1:]]
            sizes[tensor] = int(np.prod(dims, dtype=np.int64)) * np.dtype(t.dtype).itemsize
    return sizes


def cuda_memory_pool_bytes(options: RepositoryOptions = RepositoryOptions(), stage: Stage = Stage.TRACK_STEP) -> int:
    """``--cuda-memory-pool-byte-size`` for one GPU: a full batch in flight in every step of the ensemble at once.

    Per-item intermediates x ``max_batch_size`` x steps, rounded up to a MiB.
    """
    total = sum(ensemble_intermediate_bytes(stage).values()) * options.max_batch_size * len(ENSEMBLE_WIRING[stage])
    return -(-total // 2**20) * 2**20


def repository_specs() -> dict[Stage, GraphSpec]:
    """Every model of a repository: the stage graphs, the wire-dtype casts, then the ensembles built on them."""
    return {**GRAPHS, **TRITON_GRAPHS, **TRITON_ENSEMBLES}


def triton_graph_onnx(stage: Stage) -> bytes:
    """The ONNX graph of one of ``graphs.TRITON_GRAPHS`` (a Cast or an Expand), from the contract; needs ``onnx``."""
    import onnx
    from onnx import helper

    spec = TRITON_GRAPHS[stage]

    def value_info(t: TensorSpec, batch: str = "batch") -> Any:
        dims = [batch if i == 0 else ("slots" if d < 0 else d) for i, d in enumerate(t.shape)]
        return helper.make_tensor_value_info(t.name, helper.np_dtype_to_tensor_dtype(np.dtype(t.dtype)), dims)

    if stage is Stage.FEATURE_BROADCAST:
        *features, rows = spec.inputs
        # [rows' batch, the feature's own dims]: Expand repeats the slice's batch of 1 to one row per object.
        nodes = [
            helper.make_node("Shape", [rows.name], ["rows_shape"], start=0, end=1),
            *(
                helper.make_node(
                    "Constant",
                    [],
                    [f"{t.name}_dims"],
                    value=helper.make_tensor(f"{t.name}_dims", onnx.TensorProto.INT64, [len(t.shape) - 1], t.shape[1:]),
                )
                for t in features
            ),
            *(
                helper.make_node("Concat", ["rows_shape", f"{t.name}_dims"], [f"{t.name}_shape"], axis=0)
                for t in features
            ),
            *(
                helper.make_node("Expand", [t.name, f"{t.name}_shape"], [out.name])
                for t, out in zip(features, spec.outputs, strict=True)
            ),
        ]
        inputs = [*(value_info(t, "slice") for t in features), value_info(rows)]
    else:
        (source,), (target,) = spec.inputs, spec.outputs
        to = helper.np_dtype_to_tensor_dtype(np.dtype(target.dtype))
        nodes = [helper.make_node("Cast", [source.name], [target.name], to=to)]
        inputs = [value_info(source)]
    graph = helper.make_graph(nodes, stage.value, inputs, [value_info(t) for t in spec.outputs])
    # Opset 17 and IR 8, like the exported stage graphs: read by every ONNX Runtime and TensorRT 10 parser.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="medsam2")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _render_fields(fields: Mapping[str, Any], depth: int) -> list[str]:
    pad = "  " * depth
    lines: list[str] = []
    for name, value in fields.items():
        if isinstance(value, Mapping):
            lines += [f"{pad}{name} {{", *_render_fields(value, depth + 1), f"{pad}}}"]
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            lines += [f"{pad}{name} ["]
            for i, item in enumerate(value):
                comma = "," if i < len(value) - 1 else ""
                lines += [f"{pad}  {{", *_render_fields(item, depth + 2), f"{pad}  }}{comma}"]
            lines += [f"{pad}]"]
        elif isinstance(value, list):
            lines.append(f"{pad}{name}: [ {', '.join(_scalar(v) for v in value)} ]" if value else f"{pad}{name}: [ ]")
        else:
            lines.append(f"{pad}{name}: {_scalar(value)}")
    return lines


def _scalar(value: Any) -> str:
    if isinstance(value, _Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        # Tensor and model names are plain identifiers; refuse anything needing escapes rather than mis-escape it.
        if not value.isprintable() or '"' in value or "\\" in value:
            raise ConfigError(f"cannot write {value!r} into config.pbtxt")
        return f'"{value}"'
    raise TypeError(f"no text-format rendering for {type(value).__name__}")


# ---------------------------------------------------------------------------------------------
# Validation


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}: expected one of {', '.join(BACKENDS)}")


def _check_options(options: RepositoryOptions, backend: str) -> None:
    if options.max_batch_size < 1:
        raise ConfigError(f"max_batch_size must be at least 1, got {options.max_batch_size}")
    bad = [b for b in options.preferred_batch_sizes if not 1 <= b <= options.max_batch_size]
    if bad:
        raise ConfigError(f"preferred batch sizes {bad} are outside 1..max_batch_size ({options.max_batch_size})")
    if options.max_queue_delay_us < 0:
        raise ConfigError(f"max_queue_delay_us must not be negative, got {options.max_queue_delay_us}")
    if options.instance_count < 1:
        raise ConfigError(f"instance_count must be at least 1, got {options.instance_count}")
    if options.instance_kind not in _INSTANCE_KINDS:
        kinds = ", ".join(_INSTANCE_KINDS)
        raise ConfigError(f"unknown instance kind {options.instance_kind!r}: expected one of {kinds}")
    if backend == "tensorrt" and options.instance_kind != "GPU":
        raise ConfigError("a TensorRT plan only runs on a GPU: instance_kind must be 'GPU' for the tensorrt backend")


def _check_model_files(model_files: Mapping[Stage, Path], backend: str) -> dict[Stage, Path]:
    # ONNX casts for the wire dtypes are written from the contract; TensorRT needs their plans too.
    needed = [*GRAPHS, *(TRITON_GRAPHS if backend == "tensorrt" else ())]
    missing = [s.value for s in needed if s not in model_files]
    if missing:
        raise ConfigError(f"no model file given for stage(s): {', '.join(missing)}")
    files = {stage: Path(model_files[stage]) for stage in needed}
    for stage, path in files.items():
        if not path.is_file():
            raise ConfigError(f"model file for {stage.value} not found: {path}")
        # Copying an ONNX graph in as model.plan (or the reverse) only fails later, inside Triton.
        is_onnx = path.suffix.lower() == ".onnx"
        if is_onnx != (backend == "onnxruntime"):
            want = "an .onnx graph" if backend == "onnxruntime" else "a serialized TensorRT engine, not .onnx"
            raise ConfigError(f"model file for {stage.value} must be {want} for the {backend} backend: {path}")
    return files


def check_output_dir(path: Path) -> None:
    """Raise ``OutputNotWritable`` unless ``path`` is, or can be created as, a writable folder; writes nothing."""
    path = Path(path)
    existing = path
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputNotWritable(f"cannot write to {path}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputNotWritable(f"cannot write to {path}: {existing} is not writable")


# ---------------------------------------------------------------------------------------------
# Writing


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename, so a failure leaves no half-written file."""
    write_bytes_atomic(path, data)


def copy_atomic(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` via a temporary file and a rename, so a failure leaves no half-copied file."""
    atomic_writer(dst, lambda tmp: shutil.copyfile(src, tmp))


def write_model_repository(
    out_dir: Path,
    backend: str,
    model_files: Mapping[Stage, Path] | None = None,
    options: RepositoryOptions = RepositoryOptions(),
    *,
    version: int = 1,
) -> list[Path]:
    """Write ``<out_dir>/<stage>/config.pbtxt`` per stage, plus ``<version>/model.onnx|plan`` when ``model_files``
    is given (every version folder of every graph and ensemble, and the ensembles pinned to ``version``; other
    versions are left in place)."""
    if version < 1:
        raise ConfigError(f"model version must be 1 or more, got {version}")
    _check_backend(backend)
    _check_options(options, backend)
    files = _check_model_files(model_files, backend) if model_files is not None else None
    out_dir = Path(out_dir)
    check_output_dir(out_dir)
    # Render everything first so that a bad spec fails before any file is touched.
    configs = {stage: render_config(spec, backend, options) for stage, spec in repository_specs().items()}
    written: list[Path] = []
    for stage, text in configs.items():
        config_path = out_dir / stage.value / "config.pbtxt"
        write_atomic(config_path, text.encode("utf-8"))
        written.append(config_path)
        if files is None:
            continue
        model_path = out_dir / stage.value / str(version) / _MODEL_FILE[backend]
        if stage in TRITON_ENSEMBLES:
            make_version_dir(out_dir / stage.value, version)
        elif stage in files:
            copy_atomic(files[stage], model_path)
            written.append(model_path)
        else:  # a wire-dtype cast, built here from the contract (TensorRT plans of them come with model_files)
            write_atomic(model_path, triton_graph_onnx(stage))
            written.append(model_path)
    if files is not None:
        written += write_pinned_ensembles(out_dir, version, options)
    return written


def make_version_dir(model_dir: Path, version: int = 1) -> None:
    """Create ``model_dir/<version>``: Triton loads no model, ensembles included, without a version folder."""
    try:
        (Path(model_dir) / str(version)).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputNotWritable(f"cannot write {model_dir}/{version}: {e}") from e


# ---------------------------------------------------------------------------------------------
# Committed copies


def committed_repository_dir() -> Path:
    """The repo's ``model_repository/`` folder, whose per-backend configs are committed."""
    return Path(__file__).resolve().parents[2] / "model_repository"


def main_regenerate(argv: Sequence[str] | None = None) -> int:
    """Rewrite the committed ``model_repository/<backend>/<stage>/config.pbtxt`` files from the contract."""
    parser = argparse.ArgumentParser(
        prog="python -m medsam2_export.model_repository",
        description="Regenerate the committed Triton configs from services/medsam2/graphs.py.",
    )
    parser.add_argument(
        "--root", type=Path, default=committed_repository_dir(), help="folder holding one repository per backend"
    )
    args = parser.parse_args(argv)
    for backend in BACKENDS:
        for path in write_model_repository(args.root / backend, backend):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main_regenerate())
