"""Build TensorRT FP16 engines from the stage ONNX graphs, with LayerNorm and softmax kept in FP32.

``tensorrt`` is imported only inside ``build_engines`` so that the pure parts
(optimisation profiles, FP32 pinning decisions) run and are tested anywhere.
Needs TensorRT 10.x: 11.x removed the FP16/precision-constraint builder flags
this build relies on, and 8.x/9.x have no INT64 tensors (``memory_tpos``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from medsam2 import graphs
from medsam2.errors import BackendUnavailable, ConfigError
from medsam2.graphs import BF16, GRAPHS, TRITON_GRAPHS, GraphSpec, Stage
from medsam2_export.model_repository import check_output_dir, write_atomic

log = logging.getLogger(__name__)

TENSORRT_MISSING = (
    "TensorRT is not installed: install the `tensorrt` extra (pip install 'medsam2-serving[tensorrt]') "
    "on a machine with an NVIDIA GPU"
)
TENSORRT_WRONG_VERSION = (
    "TensorRT {version} cannot build these engines: they need TensorRT 10.x "
    "(FP16 builder flag with precision constraints, INT64 tensors); install 'tensorrt-cu12>=10,<11'"
)

TRITON_RELEASE = "24.12"
"""The Triton release that serves the plans: ``nvcr.io/nvidia/tritonserver:<release>-py3``."""
TENSORRT_VERSION = "10.7.0"
"""TensorRT inside that Triton image. A plan loads only in the TensorRT release that built it, so this is the one
place the version is written: the Dockerfiles, pyproject's ``tensorrt`` extra and the chart must agree with it
(tests/integration/test_tensorrt_versions.py checks them)."""
PLAN_VERSION_FILE = "tensorrt_version"
"""Written next to the plans and at the root of a TensorRT model repository: the TensorRT that built them."""

Shape = tuple[int, ...]
ProfileShapes = dict[str, tuple[Shape, Shape, Shape]]


# ---------------------------------------------------------------------------------------------
# Optimisation profiles


def profile_shapes(spec: GraphSpec, max_batch: int = 16, opt_batch: int = 4) -> ProfileShapes:
    """``{input: (min, opt, max) shape}``: batch 1/opt/max, slots 1/NUM_MASKMEM/MAX_MEMORY_SLOTS, channels 1/1/3."""
    if not 1 <= opt_batch <= max_batch:
        raise ConfigError(f"batch sizes must satisfy 1 <= opt_batch ({opt_batch}) <= max_batch ({max_batch})")
    return {t.name: _input_profile(spec, t.name, t.shape, max_batch, opt_batch) for t in spec.inputs}


def _input_profile(
    spec: GraphSpec, name: str, shape: Shape, max_batch: int, opt_batch: int
) -> tuple[Shape, Shape, Shape]:
    ranges = []
    for axis, dim in enumerate(shape):
        if dim >= 0:
            ranges.append((dim, dim, dim))
        elif axis == 0:
            ranges.append((1, opt_batch, max_batch))
        elif axis == 1 and (name.startswith("memory") or name == "rows"):  # feature_broadcast's rows: memory_valid
            ranges.append((1, graphs.NUM_MASKMEM, graphs.MAX_MEMORY_SLOTS))
        elif axis == 1 and name == "image":
            ranges.append((min(graphs.IMAGE_CHANNELS), min(graphs.IMAGE_CHANNELS), max(graphs.IMAGE_CHANNELS)))
        else:
            raise ConfigError(f"{spec.stage.value}.{name}: no profile range for dynamic axis {axis} of {shape}")
    mins, opts, maxs = zip(*ranges, strict=True)
    return tuple(mins), tuple(opts), tuple(maxs)


# ---------------------------------------------------------------------------------------------
# FP32 pinning


@dataclass(frozen=True, slots=True)
class LayerInfo:
    """What the pinning decision needs of one network layer; ``op`` is the elementwise/reduce/unary operation name."""

    name: str
    type_name: str
    op: str | None = None
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    output_dtypes: tuple[str, ...] = ("FLOAT",)


_ALWAYS_FP32 = frozenset({"NORMALIZATION", "SOFTMAX"})
# Only arithmetic is pinned: shape, gather and shuffle layers inside a norm scope do not lose precision.
_ARITHMETIC = frozenset({"NORMALIZATION", "SOFTMAX", "ELEMENTWISE", "REDUCE", "UNARY"})
_FLOAT_TYPES = frozenset({"FLOAT", "HALF", "BF16"})
_LAYERNORM_NAME = re.compile(r"layer_?norm", re.IGNORECASE)
# A path segment naming a norm module: norm, norm1, norm_final_attn, layer_norm (sam2's names).
_NORM_SEGMENT = re.compile(r"(?:\w+_)?norm(?:\d+|_\w+)?", re.IGNORECASE)


def fp32_layer_indices(layers: Sequence[LayerInfo]) -> list[int]:
    """Indices of the layers to run in FP32: softmax and LayerNorm, whether fused, named, or spelled out as ops."""
    pinned = {i for i, layer in enumerate(layers) if _pinned_by_type_or_name(layer)}
    pinned |= _variance_norm_layers(layers)
    return sorted(i for i in pinned if _is_float_arithmetic(layers[i]))


def _pinned_by_type_or_name(layer: LayerInfo) -> bool:
    if layer.type_name in _ALWAYS_FP32 or _LAYERNORM_NAME.search(layer.name):
        return True
    return any(_NORM_SEGMENT.fullmatch(seg) for seg in re.split(r"[/.:]", layer.name))


def _is_float_arithmetic(layer: LayerInfo) -> bool:
    return layer.type_name in _ARITHMETIC and all(d in _FLOAT_TYPES for d in layer.output_dtypes)


def _variance_norm_layers(layers: Sequence[LayerInfo]) -> set[int]:
    """Layers of ``(x - mean(x)) / sqrt(mean((x - mean(x))**2) + eps)`` found by dataflow, whatever their names.

    Catches hand-written norms such as sam2's LayerNorm2d inside unnamed
    ``Sequential`` slots (``output_upscaling.1``), which the name rules miss.
    """
    producer = {out: i for i, layer in enumerate(layers) for out in layer.outputs}
    consumers: dict[str, list[int]] = {}
    for i, layer in enumerate(layers):
        for name in layer.inputs:
            consumers.setdefault(name, []).append(i)

    def feeding(i: int, type_name: str, op: str) -> int | None:
        for name in layers[i].inputs:
            j = producer.get(name)
            if j is not None and layers[j].type_name == type_name and layers[j].op == op:
                return j
        return None

    found: set[int] = set()
    for i, layer in enumerate(layers):
        if (layer.type_name, layer.op) != ("UNARY", "SQRT"):
            continue
        chain = [i]
        eps_add = feeding(i, "ELEMENTWISE", "SUM")
        if eps_add is not None:
            chain.append(eps_add)
        variance = feeding(chain[-1], "REDUCE", "AVG")
        square = feeding(variance, "ELEMENTWISE", "POW") if variance is not None else None
        if square is None:
            continue
        chain += [variance, square]
        centre = feeding(square, "ELEMENTWISE", "SUB")
        if centre is not None:
            chain.append(centre)
            mean = feeding(centre, "REDUCE", "AVG")
            chain += [mean] if mean is not None else []
        divides = [j for out in layer.outputs for j in consumers.get(out, ()) if layers[j].op == "DIV"]
        found.update(chain + divides)
    return found


def describe_layer(trt: ModuleType, layer: Any) -> LayerInfo:
    """A ``LayerInfo`` for one ``trt.ILayer``."""
    type_name = layer.type.name
    op = None
    subclasses = {"ELEMENTWISE": trt.IElementWiseLayer, "REDUCE": trt.IReduceLayer, "UNARY": trt.IUnaryLayer}
    subclass = subclasses.get(type_name)
    if subclass is not None:
        # The network hands out plain ILayer wrappers; re-typing them is how the Python API exposes `op`.
        layer.__class__ = subclass
        op = layer.op.name
    inputs = tuple(t.name for t in (layer.get_input(k) for k in range(layer.num_inputs)) if t is not None)
    outputs = [layer.get_output(k) for k in range(layer.num_outputs)]
    out_names, out_dtypes = tuple(t.name for t in outputs), tuple(t.dtype.name for t in outputs)
    return LayerInfo(layer.name, type_name, op, inputs, out_names, out_dtypes)


def pin_fp32_layers(trt: ModuleType, network: Any) -> list[str]:
    """Force the layers chosen by ``fp32_layer_indices`` to compute and output FP32; returns their names."""
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    infos = [describe_layer(trt, layer) for layer in layers]
    names = []
    for i in fp32_layer_indices(infos):
        layer = layers[i]
        layer.precision = trt.float32
        for k in range(layer.num_outputs):
            layer.set_output_type(k, trt.float32)
        names.append(infos[i].name)
    return names


# ---------------------------------------------------------------------------------------------
# Engine building


def onnx_path(onnx_dir: Path, stage: Stage) -> Path:
    """Where the ONNX graph of ``stage`` is expected: ``<onnx_dir>/<stage>.onnx``."""
    return Path(onnx_dir) / f"{stage.value}.onnx"


def engine_path(out_dir: Path, stage: Stage) -> Path:
    """Where the engine of ``stage`` is written: ``<out_dir>/<stage>.plan``."""
    return Path(out_dir) / f"{stage.value}.plan"


def build_engines(
    onnx_dir: Path,
    out_dir: Path,
    *,
    max_batch: int = 16,
    opt_batch: int = 4,
    workspace_gib: float | None = None,
    stages: Iterable[Stage] | None = None,
    expected_version: str | None = TENSORRT_VERSION,
) -> dict[Stage, Path]:
    """Build one FP16 engine per stage from ``<onnx_dir>/<stage>.onnx`` into ``<out_dir>/<stage>.plan``.

    Refuses a TensorRT other than ``expected_version`` (Triton's; ``None`` accepts any 10.x) and records the one
    used in ``<out_dir>/tensorrt_version``.
    """
    chosen = list(stages) if stages is not None else list(GRAPHS)
    specs = {**GRAPHS, **TRITON_GRAPHS}
    # Everything that can be checked without TensorRT is, so mistakes surface on any machine and nothing is written.
    profiles = {stage: profile_shapes(specs[stage], max_batch, opt_batch) for stage in chosen}
    sources = {stage: onnx_path(onnx_dir, stage) for stage in chosen}
    for stage, path in sources.items():
        if not path.is_file():
            raise ConfigError(f"ONNX graph for {stage.value} not found: {path}")
    check_output_dir(Path(out_dir))
    trt = import_tensorrt(expected_version)
    logger = _collecting_logger(trt)
    builder = _create_builder(trt, logger)
    built = {}
    for stage in chosen:
        plan = _build_one(trt, builder, logger, sources[stage], specs[stage], profiles[stage], workspace_gib)
        built[stage] = engine_path(out_dir, stage)
        write_atomic(built[stage], plan)
        log.info("wrote %s (%.1f MiB)", built[stage], len(plan) / 2**20)
    write_atomic(Path(out_dir) / PLAN_VERSION_FILE, f"{trt.__version__}\n".encode())
    return built


def same_release(plan_version: str, server_version: str) -> bool:
    """Whether plans built by TensorRT ``plan_version`` load in ``server_version``: the same major.minor.patch."""
    return _release(plan_version) == _release(server_version)


def _release(version: str) -> tuple[str, ...]:
    parts = tuple(version.strip().split("."))[:3]
    if len(parts) < 3 or not all(p.isdigit() for p in parts):
        raise ConfigError(f"not a TensorRT version: {version!r} (expected major.minor.patch, e.g. {TENSORRT_VERSION})")
    return parts


def check_build_version(version: str, expected: str = TENSORRT_VERSION) -> None:
    """Raise ``BackendUnavailable`` unless TensorRT ``version`` builds plans that Triton's ``expected`` loads."""
    if not same_release(version, expected):
        raise BackendUnavailable(
            f"TensorRT {version} would build plans that Triton {TRITON_RELEASE} (TensorRT {expected}) cannot load: "
            f"install 'tensorrt-cu12=={expected}' (pip install 'medsam2-serving[tensorrt]')"
        )


def check_plan_version(repository: Path, server_version: str) -> str:
    """The TensorRT that built ``repository``'s plans; ``ConfigError`` if unrecorded or not ``server_version``'s."""
    path = Path(repository) / PLAN_VERSION_FILE
    try:
        plan_version = path.read_text().strip()
    except OSError as e:
        raise ConfigError(
            f"{path} is missing: the plans' TensorRT version is unknown; rebuild the repository "
            f"with `medsam2 export --backend tensorrt` ({e.strerror})"
        ) from e
    if not same_release(plan_version, server_version):
        raise ConfigError(
            f"the plans in {repository} were built with TensorRT {plan_version}, but the server has "
            f"TensorRT {server_version}: rebuild them with TensorRT {server_version} "
            "(a new model version)"
        )
    return plan_version


def import_tensorrt(expected_version: str | None = TENSORRT_VERSION) -> ModuleType:
    """The ``tensorrt`` module, or ``BackendUnavailable`` if it is missing, not a usable 10.x, or not Triton's."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise BackendUnavailable(TENSORRT_MISSING) from e
    needed = (
        hasattr(trt, "BuilderFlag")
        and hasattr(trt.BuilderFlag, "FP16")
        and hasattr(trt.BuilderFlag, "OBEY_PRECISION_CONSTRAINTS")
        and hasattr(getattr(trt, "DataType", None), "INT64")
    )
    if not needed:
        raise BackendUnavailable(TENSORRT_WRONG_VERSION.format(version=getattr(trt, "__version__", "?")))
    if expected_version is not None:
        check_build_version(str(getattr(trt, "__version__", "?")), expected_version)
    return trt


def _collecting_logger(trt: ModuleType) -> Any:
    """A ``trt.ILogger`` that forwards to ``logging`` and keeps errors for exception messages."""

    class CollectingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if int(severity) <= int(trt.ILogger.Severity.ERROR):
                self.errors.append(msg)
                log.error("TensorRT: %s", msg)
            elif int(severity) <= int(trt.ILogger.Severity.WARNING):
                log.warning("TensorRT: %s", msg)
            else:
                log.debug("TensorRT: %s", msg)

    return CollectingLogger()


def _create_builder(trt: ModuleType, logger: Any) -> Any:
    # Without a visible CUDA device the binding raises (nullptr factory) or returns None, with the cause in the log.
    try:
        builder = trt.Builder(logger)
    except (TypeError, RuntimeError) as e:
        builder, cause = None, f"{type(e).__name__}: {e}"
    else:
        cause = ""
    if builder is None:
        detail = "; ".join(logger.errors) or cause or "no details"
        raise BackendUnavailable(
            f"TensorRT could not create a builder; is an NVIDIA GPU visible (nvidia-smi)? ({detail})"
        )
    return builder


def _build_one(
    trt: ModuleType,
    builder: Any,
    logger: Any,
    onnx_file: Path,
    spec: GraphSpec,
    profile: ProfileShapes,
    workspace_gib: float | None,
) -> bytes:
    """Parse one ONNX graph, pin FP32 layers, and return the serialized FP16 engine."""
    # TensorRT 10 networks are always explicit-batch; flag 0 keeps them weakly typed so FP16 is the builder's choice.
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_file)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)] or logger.errors or ["no details"]
        listed = "\n".join(f"  - {e}" for e in errors)
        raise ConfigError(f"TensorRT could not parse {onnx_file} ({len(errors)} error(s)):\n{listed}")
    _check_io(network, spec, onnx_file)
    config = builder.create_builder_config()
    # The Triton-only graphs are exact casts and copies: FP16 would let TensorRT round the features they carry.
    if spec.stage not in TRITON_GRAPHS:
        config.set_flag(trt.BuilderFlag.FP16)
    config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    if any(t.dtype is BF16 for t in spec.inputs):  # the wire casts (graphs.TRITON_GRAPHS) read bfloat16
        config.set_flag(trt.BuilderFlag.BF16)
    if workspace_gib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 2**30))
    opt_profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile.items():
        opt_profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(opt_profile)
    pinned = pin_fp32_layers(trt, network)
    log.info("%s: %d layer(s) pinned to FP32", spec.stage.value, len(pinned))
    logger.errors.clear()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        detail = "; ".join(logger.errors) or "no details"
        raise BackendUnavailable(f"TensorRT failed to build the {spec.stage.value} engine from {onnx_file}: {detail}")
    return bytes(plan)


def _check_io(network: Any, spec: GraphSpec, onnx_file: Path) -> None:
    """Refuse a graph whose inputs/outputs are not the contract's (a stale or foreign ONNX file)."""
    got_in = [network.get_input(i).name for i in range(network.num_inputs)]
    got_out = [network.get_output(i).name for i in range(network.num_outputs)]
    want_in = [t.name for t in spec.inputs]
    want_out = [t.name for t in spec.outputs]
    if sorted(got_in) != sorted(want_in) or sorted(got_out) != sorted(want_out):
        raise ConfigError(
            f"{onnx_file} does not match the {spec.stage.value} contract: "
            f"inputs {got_in} / outputs {got_out}, expected {want_in} / {want_out}"
        )
