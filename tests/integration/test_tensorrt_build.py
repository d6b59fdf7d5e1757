"""TensorRT engine build: profiles, FP32 pinning decisions, and failures before and inside the builder."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from medsam2 import graphs
from medsam2.errors import BackendUnavailable, ConfigError, OutputNotWritable
from medsam2.graphs import GRAPHS, GraphSpec, Stage, TensorSpec
from medsam2_export import tensorrt_build as tb
from medsam2_export.tensorrt_build import LayerInfo, fp32_layer_indices, profile_shapes

# ---------------------------------------------------------------------------------------------
# Profiles


@pytest.mark.parametrize("stage", list(GRAPHS))
def test_profile_covers_every_input_with_batch_range(stage: Stage) -> None:
    spec = GRAPHS[stage]
    profiles = profile_shapes(spec, max_batch=16, opt_batch=4)
    assert list(profiles) == [t.name for t in spec.inputs]
    for tensor in spec.inputs:
        lo, opt, hi = profiles[tensor.name]
        assert (lo[0], opt[0], hi[0]) == (1, 4, 16)
        assert len(lo) == len(opt) == len(hi) == len(tensor.shape)
        for axis, dim in enumerate(tensor.shape[1:], start=1):
            if dim >= 0:
                assert lo[axis] == opt[axis] == hi[axis] == dim


def test_memory_slot_axis_profile() -> None:
    profiles = profile_shapes(GRAPHS[Stage.MEMORY_ATTENTION], max_batch=8, opt_batch=2)
    slots = (1, graphs.NUM_MASKMEM, graphs.MAX_MEMORY_SLOTS)
    for name in ("memory", "memory_tpos", "memory_valid"):
        lo, opt, hi = profiles[name]
        assert (lo[0], opt[0], hi[0]) == (1, 2, 8)
        assert (lo[1], opt[1], hi[1]) == slots
    assert profiles["memory"][2] == (8, graphs.MAX_MEMORY_SLOTS, graphs.MEM_DIM, graphs.FEAT, graphs.FEAT)


@pytest.mark.parametrize(("max_batch", "opt_batch"), [(4, 8), (16, 0), (0, 0)])
def test_profile_rejects_bad_batch_sizes(max_batch: int, opt_batch: int) -> None:
    with pytest.raises(ConfigError, match="opt_batch"):
        profile_shapes(GRAPHS[Stage.IMAGE_ENCODER], max_batch=max_batch, opt_batch=opt_batch)


def test_profile_rejects_an_unknown_dynamic_axis() -> None:
    odd = TensorSpec("odd", graphs.F32, (-1, 3, -1), "a second dynamic axis the profile cannot size")
    spec = GraphSpec(Stage.MASK_DOWNSAMPLER, inputs=(odd,), outputs=(), doc="")
    with pytest.raises(ConfigError, match="odd"):
        profile_shapes(spec)


# ---------------------------------------------------------------------------------------------
# FP32 pinning decisions


def _pinned(layers: list[LayerInfo]) -> set[str]:
    return {layers[i].name for i in fp32_layer_indices(layers)}


def test_fused_norm_and_softmax_are_pinned_by_type() -> None:
    layers = [
        LayerInfo("some_norm_layer", "NORMALIZATION"),
        LayerInfo("/attn/Softmax", "SOFTMAX"),
        LayerInfo("/attn/MatMul", "MATRIX_MULTIPLY"),
        LayerInfo("/proj/Conv", "CONVOLUTION"),
    ]
    assert _pinned(layers) == {"some_norm_layer", "/attn/Softmax"}


def test_norm_scoped_and_layernorm_named_layers_are_pinned() -> None:
    layers = [
        LayerInfo("/image_encoder/trunk/blocks.0/norm1/ReduceMean", "REDUCE", "AVG"),
        LayerInfo("/memory_attention/layers.2/norm3/Sub", "ELEMENTWISE", "SUB"),
        LayerInfo("/sam_mask_decoder/transformer/norm_final_attn/Add_1", "ELEMENTWISE", "SUM"),
        LayerInfo("/memory_attention/norm/Mul", "ELEMENTWISE", "PROD"),
        LayerInfo("node_LayerNormalization_12", "ELEMENTWISE", "DIV"),
        LayerInfo("/blocks.1/layer_norm/Sqrt", "UNARY", "SQRT"),
        # Not norms: similar words, and plain arithmetic elsewhere.
        LayerInfo("/image_encoder/normalize/Sub", "ELEMENTWISE", "SUB"),
        LayerInfo("/no_mem_embed/Add", "ELEMENTWISE", "SUM"),
        LayerInfo("/mlp/layers.0/Add", "ELEMENTWISE", "SUM"),
    ]
    assert _pinned(layers) == {layer.name for layer in layers[:6]}


def test_non_arithmetic_or_non_float_layers_in_a_norm_scope_are_left_alone() -> None:
    layers = [
        LayerInfo("/blocks.0/norm1/Shape", "SHAPE", output_dtypes=("INT64",)),
        LayerInfo("/blocks.0/norm1/Reshape", "SHUFFLE"),
        LayerInfo("/blocks.0/norm1/Constant", "CONSTANT"),
        LayerInfo("/blocks.0/norm1/Add_index", "ELEMENTWISE", "SUM", output_dtypes=("INT32",)),
        LayerInfo("/blocks.0/norm1/Div", "ELEMENTWISE", "DIV", output_dtypes=("HALF",)),
    ]
    assert _pinned(layers) == {"/blocks.0/norm1/Div"}


def _spelled_out_norm(prefix: str) -> list[LayerInfo]:
    """sam2's LayerNorm2d as exported: u = mean(x); s = mean((x - u)^2); (x - u) / sqrt(s + eps)."""
    return [
        LayerInfo(f"{prefix}/ReduceMean", "REDUCE", "AVG", ("x",), ("u",)),
        LayerInfo(f"{prefix}/Sub", "ELEMENTWISE", "SUB", ("x", "u"), ("d",)),
        LayerInfo(f"{prefix}/Constant", "CONSTANT", None, (), ("two",)),
        LayerInfo(f"{prefix}/Pow", "ELEMENTWISE", "POW", ("d", "two"), ("d2",)),
        LayerInfo(f"{prefix}/ReduceMean_1", "REDUCE", "AVG", ("d2",), ("s",)),
        LayerInfo(f"{prefix}/Add", "ELEMENTWISE", "SUM", ("s", "eps"), ("se",)),
        LayerInfo(f"{prefix}/Sqrt", "UNARY", "SQRT", ("se",), ("r",)),
        LayerInfo(f"{prefix}/Div", "ELEMENTWISE", "DIV", ("d", "r"), ("y",)),
        LayerInfo(f"{prefix}/Mul", "ELEMENTWISE", "PROD", ("y", "w"), ("yw",)),
    ]


def test_spelled_out_layernorm_is_found_by_dataflow_whatever_its_name() -> None:
    layers = _spelled_out_norm("/sam_mask_decoder/output_upscaling/output_upscaling.1")
    pinned = _pinned(layers)
    ops = {name.rsplit("/", 1)[1] for name in pinned}
    # The affine Mul after the division is ordinary precision-safe arithmetic; the constant is not computed.
    assert ops == {"ReduceMean", "Sub", "Pow", "ReduceMean_1", "Add", "Sqrt", "Div"}


def test_sqrt_without_a_variance_pattern_is_not_pinned() -> None:
    layers = [
        LayerInfo("/pe/Mul", "ELEMENTWISE", "PROD", ("a", "a"), ("aa",)),
        LayerInfo("/pe/Sqrt", "UNARY", "SQRT", ("aa",), ("r",)),
        LayerInfo("/pe/Div", "ELEMENTWISE", "DIV", ("b", "r"), ("q",)),
    ]
    assert _pinned(layers) == set()


# ---------------------------------------------------------------------------------------------
# build_engines: checks that need no TensorRT


def _onnx_dir(tmp_path: Path, skip: Stage | None = None) -> Path:
    onnx_dir = tmp_path / "onnx"
    onnx_dir.mkdir()
    for stage in GRAPHS:
        if stage is not skip:
            (onnx_dir / f"{stage.value}.onnx").write_bytes(b"not really onnx")
    return onnx_dir


def test_missing_onnx_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    onnx_dir = _onnx_dir(tmp_path, skip=Stage.MEMORY_ENCODER)
    with pytest.raises(ConfigError, match=re.escape(str(onnx_dir / "memory_encoder.onnx"))):
        tb.build_engines(onnx_dir, tmp_path / "engines")
    assert not (tmp_path / "engines").exists()


def test_unwritable_out_dir_is_reported_before_tensorrt(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    with pytest.raises(OutputNotWritable, match="blocker"):
        tb.build_engines(_onnx_dir(tmp_path), blocker / "engines")


def test_bad_batch_sizes_are_reported_before_tensorrt(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="opt_batch"):
        tb.build_engines(_onnx_dir(tmp_path), tmp_path / "engines", max_batch=2, opt_batch=4)


@pytest.mark.parametrize("existing", [False, True])
def test_without_tensorrt_it_fails_clearly_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, existing: bool
) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails even where TensorRT is installed
    out = tmp_path / "engines"
    if existing:
        out.mkdir()
    with pytest.raises(BackendUnavailable, match="TensorRT is not installed") as info:
        tb.build_engines(_onnx_dir(tmp_path), out)
    assert "pip install 'medsam2-serving[tensorrt]'" in str(info.value)
    assert out.exists() == existing
    assert not existing or list(out.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# build_engines against a fake tensorrt module: the driving logic without a GPU


class _Enum:
    def __init__(self, name: str) -> None:
        self.name = name


class _Tensor:
    def __init__(self, name: str, dtype: str = "FLOAT") -> None:
        self.name = name
        self.dtype = _Enum(dtype)


class _Layer:
    def __init__(self, name: str, type_name: str, op: str | None = None) -> None:
        self.name, self.type, self.op = name, _Enum(type_name), _Enum(op) if op else None
        self.precision: Any = None
        self.output_types: dict[int, Any] = {}
        self.num_inputs, self.num_outputs = 1, 1

    def get_input(self, k: int) -> _Tensor:
        return _Tensor(f"{self.name}:in")

    def get_output(self, k: int) -> _Tensor:
        return _Tensor(f"{self.name}:out")

    def set_output_type(self, k: int, dtype: Any) -> None:
        self.output_types[k] = dtype


class _ElementWise(_Layer):
    pass


class _Network:
    def __init__(self) -> None:
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self.layers = [
            _Layer("/attn/Softmax", "SOFTMAX"),
            _Layer("/blocks.0/norm1/Div", "ELEMENTWISE", "DIV"),
            _Layer("/conv", "CONVOLUTION"),
        ]

    num_layers = property(lambda self: len(self.layers))
    num_inputs = property(lambda self: len(self.inputs))
    num_outputs = property(lambda self: len(self.outputs))

    def get_layer(self, i: int) -> _Layer:
        return self.layers[i]

    def get_input(self, i: int) -> _Tensor:
        return _Tensor(self.inputs[i])

    def get_output(self, i: int) -> _Tensor:
        return _Tensor(self.outputs[i])


def _fake_trt(
    monkeypatch: pytest.MonkeyPatch,
    *,
    parse_errors: tuple[str, ...] = (),
    no_gpu: bool = False,
    version: int = 10,
    version_string: str | None = None,
) -> types.SimpleNamespace:
    """Install a stand-in ``tensorrt`` module; returns what the build asked of it."""
    trt = types.ModuleType("tensorrt")
    # Triton's TensorRT unless told otherwise, as the build requires.
    trt.__version__ = version_string or (tb.TENSORRT_VERSION + ".23" if version == 10 else f"{version}.0.0")
    trt.float32 = "float32"
    trt.DataType = types.SimpleNamespace(INT64="INT64")
    # TensorRT 11 dropped the weak-typing flags.
    flags = {"FP16": "FP16", "OBEY_PRECISION_CONSTRAINTS": "OBEY", "BF16": "BF16"} if version == 10 else {}
    trt.BuilderFlag = types.SimpleNamespace(**flags)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.IElementWiseLayer, trt.IReduceLayer, trt.IUnaryLayer = _ElementWise, _Layer, _Layer
    record = types.SimpleNamespace(flags=set(), profiles={}, networks=[], workspace=None)

    class ILogger:
        Severity = types.SimpleNamespace(INTERNAL_ERROR=0, ERROR=1, WARNING=2, INFO=3, VERBOSE=4)

        def __init__(self) -> None:
            pass

    class Profile:
        def set_shape(self, name: str, lo: tuple, opt: tuple, hi: tuple) -> None:
            self.shapes = {**getattr(self, "shapes", {}), name: (lo, opt, hi)}

    class Config:
        def set_flag(self, flag: str) -> None:
            record.flags.add(flag)

        def set_memory_pool_limit(self, pool: str, size: int) -> None:
            record.workspace = size

        def add_optimization_profile(self, profile: Profile) -> None:
            self.profile = profile

    class Builder:
        def __init__(self, logger: ILogger) -> None:
            if no_gpu:
                logger.log(ILogger.Severity.ERROR, "CUDA initialization failure with error: 35")
                raise TypeError("pybind11::init(): factory function returned nullptr")

        def create_network(self, flags: int) -> _Network:
            record.networks.append(_Network())
            return record.networks[-1]

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: _Network, config: Config) -> bytes:
            record.profiles[network.stage] = config.profile.shapes
            return f"plan:{network.stage.value}".encode()

    class OnnxParser:
        def __init__(self, network: _Network, logger: ILogger) -> None:
            self.network = network

        def parse_from_file(self, path: str) -> bool:
            stage = Stage(Path(path).stem)
            self.network.stage = stage
            spec = {**GRAPHS, **graphs.TRITON_GRAPHS}[stage]
            self.network.inputs = [t.name for t in spec.inputs]
            self.network.outputs = [t.name for t in spec.outputs]
            return not parse_errors

        num_errors = property(lambda self: len(parse_errors))

        def get_error(self, i: int) -> str:
            return parse_errors[i]

    trt.ILogger, trt.Builder, trt.OnnxParser = ILogger, Builder, OnnxParser
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    return record


def test_builds_every_stage_with_fp16_profiles_and_pinning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    record = _fake_trt(monkeypatch)
    out = tmp_path / "engines"
    built = tb.build_engines(_onnx_dir(tmp_path), out, max_batch=8, opt_batch=2, workspace_gib=1)
    assert built == {stage: out / f"{stage.value}.plan" for stage in GRAPHS}
    assert all(path.read_bytes() == f"plan:{stage.value}".encode() for stage, path in built.items())
    assert record.flags == {"FP16", "OBEY"}
    assert record.workspace == 2**30
    assert record.profiles[Stage.MEMORY_ATTENTION] == profile_shapes(GRAPHS[Stage.MEMORY_ATTENTION], 8, 2)
    softmax, norm_div, conv = record.networks[0].layers
    assert softmax.precision == norm_div.precision == "float32" and conv.precision is None
    assert norm_div.output_types == {0: "float32"} and conv.output_types == {}
    assert sorted(p.name for p in out.iterdir()) == sorted([*(f"{s.value}.plan" for s in GRAPHS), tb.PLAN_VERSION_FILE])


def test_parser_errors_are_all_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    errors = ("In node 3 (Foo): unsupported op Foo", "In node 9 (Bar): bad attribute axis")
    _fake_trt(monkeypatch, parse_errors=errors)
    out = tmp_path / "engines"
    with pytest.raises(ConfigError) as info:
        tb.build_engines(_onnx_dir(tmp_path), out)
    message = str(info.value)
    assert "image_encoder.onnx" in message and "2 error(s)" in message
    assert all(e in message for e in errors)
    assert not out.exists() or list(out.iterdir()) == []


def test_no_gpu_is_backend_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_trt(monkeypatch, no_gpu=True)
    out = tmp_path / "engines"
    with pytest.raises(BackendUnavailable, match="GPU") as info:
        tb.build_engines(_onnx_dir(tmp_path), out)
    assert "CUDA initialization failure" in str(info.value)
    assert not out.exists()


def test_tensorrt_11_is_refused_with_the_version_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_trt(monkeypatch, version=11)
    with pytest.raises(BackendUnavailable, match=r"TensorRT 11\.0\.0 .*TensorRT 10\.x"):
        tb.build_engines(_onnx_dir(tmp_path), tmp_path / "engines")
    assert not (tmp_path / "engines").exists()


# ---------------------------------------------------------------------------------------------
# The TensorRT release: pinned to Triton's, checked at build time and against the serving side


def test_builds_record_the_tensorrt_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_trt(monkeypatch, version_string=tb.TENSORRT_VERSION + ".23")
    out = tmp_path / "engines"
    tb.build_engines(_onnx_dir(tmp_path), out, stages=[Stage.MASK_SELECT])
    assert (out / tb.PLAN_VERSION_FILE).read_text().strip() == tb.TENSORRT_VERSION + ".23"
    assert tb.check_plan_version(out, tb.TENSORRT_VERSION) == tb.TENSORRT_VERSION + ".23"


def test_a_tensorrt_other_than_tritons_is_refused_before_building(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_trt(monkeypatch, version_string="10.16.0.72")
    out, onnx_dir = tmp_path / "engines", _onnx_dir(tmp_path)
    with pytest.raises(
        BackendUnavailable,
        match=rf"TensorRT 10\.16\.0\.72 .*Triton {tb.TRITON_RELEASE} "
        rf"\(TensorRT {re.escape(tb.TENSORRT_VERSION)}\).*tensorrt-cu12==",
    ):
        tb.build_engines(onnx_dir, out)
    assert not out.exists()
    # Opting out of the pin (a Triton other than the chart's) still builds.
    tb.build_engines(onnx_dir, out, stages=[Stage.MASK_SELECT], expected_version=None)
    assert (out / "mask_select.plan").is_file()


@pytest.mark.parametrize(
    ("plan", "server", "loads"),
    [
        ("10.7.0.23", "10.7.0", True),
        ("10.7.0", "10.7.0.23", True),
        ("10.7.0", "10.7.1", False),
        ("10.16.0.72", "10.7.0.23", False),
        ("9.7.0", "10.7.0", False),
    ],
)
def test_plan_and_server_versions_must_be_one_release(plan: str, server: str, loads: bool) -> None:
    assert tb.same_release(plan, server) is loads


def test_plan_version_check_names_both_versions(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"tensorrt_version is missing.*medsam2 export --backend tensorrt"):
        tb.check_plan_version(tmp_path, "10.7.0")
    (tmp_path / tb.PLAN_VERSION_FILE).write_text("10.16.0.72\n")
    with pytest.raises(ConfigError, match=r"built with TensorRT 10\.16\.0\.72, but the server has TensorRT 10\.7\.0"):
        tb.check_plan_version(tmp_path, "10.7.0")
    with pytest.raises(ConfigError, match="not a TensorRT version: 'ten'"):
        tb.check_plan_version(tmp_path, "ten")


def test_the_bfloat16_wire_cast_builds_with_bf16_allowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medsam2_export.model_repository import triton_graph_onnx

    record = _fake_trt(monkeypatch)
    onnx_dir = tmp_path / "onnx"
    onnx_dir.mkdir()
    (onnx_dir / "memory_unpack.onnx").write_bytes(triton_graph_onnx(Stage.MEMORY_UNPACK))
    built = tb.build_engines(onnx_dir, tmp_path / "engines", stages=[Stage.MEMORY_UNPACK])
    assert built[Stage.MEMORY_UNPACK].read_bytes() == b"plan:memory_unpack"
    # An exact cast: no FP16 that could round what it carries.
    assert record.flags == {"OBEY", "BF16"}
    lo, opt, hi = record.profiles[Stage.MEMORY_UNPACK]["memory"]
    assert (lo[1], opt[1], hi[1]) == (1, graphs.NUM_MASKMEM, graphs.MAX_MEMORY_SLOTS)


def test_the_feature_broadcast_builds_without_fp16(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medsam2_export.model_repository import triton_graph_onnx

    record = _fake_trt(monkeypatch)
    onnx_dir = tmp_path / "onnx"
    onnx_dir.mkdir()
    (onnx_dir / "feature_broadcast.onnx").write_bytes(triton_graph_onnx(Stage.FEATURE_BROADCAST))
    built = tb.build_engines(onnx_dir, tmp_path / "engines", stages=[Stage.FEATURE_BROADCAST])
    assert built[Stage.FEATURE_BROADCAST].read_bytes() == b"plan:feature_broadcast"
    # A copy of the slice's features: FP16 would round them before every object's heads see them.
    assert record.flags == {"OBEY"}
