"""Triton model-repository writer: rendered configs, committed copies, binaries and error cases."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from medsam2 import graphs
from medsam2.errors import ConfigError, OutputNotWritable
from medsam2.graphs import (
    ENSEMBLES,
    GRAPHS,
    TRACK_STEP,
    TRACK_STEP_WIRING,
    TRITON_ENSEMBLES,
    TRITON_GRAPHS,
    TRITON_TRACK_STEP_WIRING,
    Stage,
)
from medsam2_export import model_repository as mr
from medsam2_export.tensorrt_build import profile_shapes

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "model_repository"
TRITON_TYPES = {
    "uint8": "TYPE_UINT8",
    "float32": "TYPE_FP32",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "bfloat16": "TYPE_BF16",
}
WIRE_TRACK_STEP = TRITON_ENSEMBLES[Stage.TRACK_STEP]


# A tiny protobuf-text reader, enough for the configs the writer produces, so structure checks need no tritonclient.
def _tokens(text: str) -> list[str]:
    text = re.sub(r"#[^\n]*", "", text)
    return re.findall(r'"(?:[^"\\]|\\.)*"|[{}\[\]:,]|[^\s{}\[\]:,"]+', text)


def _parse(text: str) -> dict[str, list[Any]]:
    toks = _tokens(text)
    fields, pos = _fields(toks, 0, None)
    assert pos == len(toks)
    return fields


def _fields(toks: list[str], pos: int, close: str | None) -> tuple[dict[str, list[Any]], int]:
    out: dict[str, list[Any]] = {}
    while pos < len(toks) and toks[pos] != close:
        name = toks[pos]
        pos += 1
        if toks[pos] == ":":
            pos += 1
        values, pos = _value(toks, pos)
        out.setdefault(name, []).extend(values)
    return out, pos + 1 if close else pos


def _value(toks: list[str], pos: int) -> tuple[list[Any], int]:
    if toks[pos] == "{":
        msg, pos = _fields(toks, pos + 1, "}")
        return [msg], pos
    if toks[pos] == "[":
        items, pos = [], pos + 1
        while toks[pos] != "]":
            got, pos = _value(toks, pos)
            items += got
            pos += toks[pos] == ","
        return items, pos + 1
    tok = toks[pos]
    if tok.startswith('"'):
        return [tok[1:-1]], pos + 1
    if re.fullmatch(r"-?\d+", tok):
        return [int(tok)], pos + 1
    return [tok], pos + 1


def _only(fields: dict[str, list[Any]], name: str) -> Any:
    (value,) = fields[name]
    return value


def _expected_dims(shape: tuple[int, ...]) -> list[int]:
    return list(shape[1:]) or [1]


# ---------------------------------------------------------------------------------------------


def test_committed_configs_are_fresh(tmp_path: Path) -> None:
    mr.main_regenerate(["--root", str(tmp_path)])
    fresh = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("config.pbtxt")}
    committed = {p.relative_to(COMMITTED): p.read_bytes() for p in COMMITTED.rglob("config.pbtxt")}
    hint = "stale: run `PYTHONPATH=services:export python -m medsam2_export.model_repository`"
    assert sorted(committed) == sorted(fresh), hint
    for rel, data in fresh.items():
        assert committed[rel] == data, f"{rel} is {hint}"


@pytest.mark.parametrize("backend", mr.BACKENDS)
@pytest.mark.parametrize("stage", list(GRAPHS))
def test_config_structure_follows_the_contract(backend: str, stage: Stage) -> None:
    spec = GRAPHS[stage]
    cfg = _parse(mr.render_config(spec, backend))
    assert _only(cfg, "name") == stage.value
    assert _only(cfg, "platform") == {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}[backend]
    assert _only(cfg, "max_batch_size") == 16
    # Every version folder stays loaded: pinned sessions and roll-backs find their version in Triton.
    assert _only(_only(cfg, "version_policy"), "all") == {}
    for entries, tensors in ((cfg["input"], spec.inputs), (cfg["output"], spec.outputs)):
        assert [_only(e, "name") for e in entries] == [t.name for t in tensors]
        for entry, tensor in zip(entries, tensors, strict=True):
            assert _only(entry, "data_type") == TRITON_TYPES[tensor.dtype.__name__]
            assert entry["dims"] == _expected_dims(tensor.shape)
            assert ("reshape" in entry) == (len(tensor.shape) == 1)
            if "reshape" in entry:
                assert _only(entry, "reshape").get("shape", []) == []
    batching = _only(cfg, "dynamic_batching")
    # No preferred sizes (Triton's advice) and a short queue delay: a lone slice waits at most 200 us per step.
    assert "preferred_batch_size" not in batching
    assert _only(batching, "max_queue_delay_microseconds") == 200
    group = _only(cfg, "instance_group")
    assert (_only(group, "count"), _only(group, "kind")) == (1, "KIND_GPU")
    warmup = _only(cfg, "model_warmup")
    assert _only(warmup, "batch_size") == 1
    samples = {_only(e, "key"): _only(e, "value") for e in warmup["inputs"]}
    assert list(samples) == [t.name for t in spec.inputs]
    for tensor in spec.inputs:
        sample = samples[tensor.name]
        # Dynamic axes warm up at the TensorRT profile's opt: the trained memory count, and a grey image.
        dynamic = min(graphs.IMAGE_CHANNELS) if tensor.name == "image" else graphs.NUM_MASKMEM
        want = [dynamic if d < 0 else d for d in _expected_dims(tensor.shape)]
        assert sample["dims"] == want
        assert _only(sample, "zero_data") == "true"
        assert _only(sample, "data_type") == TRITON_TYPES[tensor.dtype.__name__]


def test_memory_slot_axis_stays_dynamic() -> None:
    cfg = _parse(mr.render_config(GRAPHS[Stage.MEMORY_ATTENTION], "tensorrt"))
    dims = {_only(e, "name"): e["dims"] for e in cfg["input"]}
    assert dims["memory"] == [-1, graphs.MEM_DIM, graphs.FEAT, graphs.FEAT]
    assert dims["memory_tpos"] == [-1] and dims["memory_valid"] == [-1]


@pytest.mark.parametrize("stage", list(GRAPHS))
def test_tensorrt_config_is_consistent_with_the_engine_profile(stage: Stage) -> None:
    spec = GRAPHS[stage]
    options = mr.RepositoryOptions()
    profiles = profile_shapes(spec, max_batch=options.max_batch_size, opt_batch=4)
    for tensor in spec.inputs:
        lo, _, hi = profiles[tensor.name]
        assert hi[0] == options.max_batch_size
        if len(tensor.shape) == 1:
            continue
        # Dynamic in the config exactly where the profile spans a range, and warm-up inside that range.
        assert [d < 0 for d in mr.triton_dims(tensor)] == [a != b for a, b in zip(lo[1:], hi[1:], strict=True)]
        assert all(a <= w <= b for a, w, b in zip(lo[1:], mr.warmup_dims(tensor), hi[1:], strict=True))


def _triton_model_config() -> Any:
    try:
        from tritonclient.grpc import model_config_pb2
    except Exception:
        return None
    return model_config_pb2


@pytest.mark.parametrize("backend", mr.BACKENDS)
def test_configs_parse_as_triton_model_config(backend: str) -> None:
    pb2 = _triton_model_config()
    if pb2 is None:
        pytest.skip("tritonclient[grpc] is not installed")
    from google.protobuf import text_format

    for stage, spec in GRAPHS.items():
        cfg = text_format.Parse(mr.render_config(spec, backend), pb2.ModelConfig())
        assert cfg.name == stage.value
        assert [i.name for i in cfg.input] == [t.name for t in spec.inputs]
        assert [i.HasField("reshape") for i in cfg.input] == [len(t.shape) == 1 for t in spec.inputs]
        assert cfg.version_policy.WhichOneof("policy_choice") == "all"
        assert set(cfg.model_warmup[0].inputs) == {t.name for t in spec.inputs}


def test_options_change_the_config() -> None:
    options = mr.RepositoryOptions(
        max_batch_size=8, preferred_batch_sizes=(2,), max_queue_delay_us=0, instance_count=3, instance_kind="CPU"
    )
    cfg = _parse(mr.render_config(GRAPHS[Stage.IMAGE_ENCODER], "onnxruntime", options))
    assert _only(cfg, "max_batch_size") == 8
    assert _only(cfg, "dynamic_batching")["preferred_batch_size"] == [2]
    group = _only(cfg, "instance_group")
    assert (_only(group, "count"), _only(group, "kind")) == (3, "KIND_CPU")


@pytest.mark.parametrize(
    ("backend", "suffix", "model_name"), [("onnxruntime", ".onnx", "model.onnx"), ("tensorrt", ".plan", "model.plan")]
)
def test_writes_configs_and_binaries(tmp_path: Path, backend: str, suffix: str, model_name: str) -> None:
    files = {}
    # TensorRT needs plans of the wire casts too; for ONNX Runtime the writer builds them from the contract.
    for stage in (*GRAPHS, *(TRITON_GRAPHS if backend == "tensorrt" else ())):
        files[stage] = tmp_path / "src" / f"{stage.value}{suffix}"
        files[stage].parent.mkdir(exist_ok=True)
        files[stage].write_bytes(stage.value.encode())
    out = tmp_path / "repo"
    written = mr.write_model_repository(out, backend, files)
    assert len(written) == 2 * (len(GRAPHS) + len(TRITON_GRAPHS)) + 2 * len(ENSEMBLES)
    for stage, spec in {**GRAPHS, **TRITON_GRAPHS}.items():
        assert (out / stage.value / "config.pbtxt").read_text() == mr.render_config(spec, backend)
        binary = (out / stage.value / "1" / model_name).read_bytes()
        assert binary == (mr.triton_graph_onnx(stage) if stage not in files else stage.value.encode())
        assert (out / stage.value / "config.pbtxt").stat().st_mode & 0o777 == 0o644
    for stage, spec in TRITON_ENSEMBLES.items():
        assert (out / stage.value / "config.pbtxt").read_text() == mr.render_config(spec, backend)
        # Triton loads no model without a version folder, an ensemble's stays empty.
        assert (out / stage.value / "1").is_dir() and not any((out / stage.value / "1").iterdir())
        # And the ensemble of version 1, every step at version 1.
        pinned = out / f"{stage.value}_v1"
        assert (pinned / "config.pbtxt").read_text() == mr.render_fields(mr.ensemble_config_fields(spec, version=1))
        assert (pinned / "1").is_dir() and not any((pinned / "1").iterdir())
    assert not list(out.rglob("*.tmp"))


def test_configs_only_without_model_files(tmp_path: Path) -> None:
    written = mr.write_model_repository(tmp_path, "tensorrt")
    assert written == [tmp_path / s.value / "config.pbtxt" for s in (*GRAPHS, *TRITON_GRAPHS, *ENSEMBLES)]
    assert not any(p.name == "1" for p in tmp_path.rglob("*"))


def test_unknown_backend_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="openvino"):
        mr.write_model_repository(tmp_path / "out", "openvino")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("options", "match"),
    [
        (mr.RepositoryOptions(preferred_batch_sizes=(4, 32)), "preferred"),
        (mr.RepositoryOptions(max_batch_size=0), "max_batch_size"),
        (mr.RepositoryOptions(instance_count=0), "instance_count"),
        (mr.RepositoryOptions(instance_kind="TPU"), "TPU"),
        (mr.RepositoryOptions(instance_kind="CPU"), "GPU"),
        (mr.RepositoryOptions(max_queue_delay_us=-1), "max_queue_delay_us"),
    ],
)
def test_bad_options_are_config_errors(tmp_path: Path, options: mr.RepositoryOptions, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        mr.write_model_repository(tmp_path / "out", "tensorrt", options=options)
    assert not (tmp_path / "out").exists()


def test_out_dir_that_is_a_file_is_not_writable(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    with pytest.raises(OutputNotWritable, match="blocker"):
        mr.write_model_repository(blocker, "onnxruntime")
    with pytest.raises(OutputNotWritable, match="blocker"):
        mr.write_model_repository(blocker / "sub" / "repo", "onnxruntime")
    assert blocker.read_text() == "x"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_out_dir_is_not_writable(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(OutputNotWritable):
            mr.write_model_repository(locked / "repo", "onnxruntime")
    finally:
        locked.chmod(0o700)


def test_missing_model_file_is_named_and_nothing_is_written(tmp_path: Path) -> None:
    files = {stage: tmp_path / f"{stage.value}.onnx" for stage in GRAPHS}
    for path in list(files.values())[:-1]:
        path.write_bytes(b"onnx")
    with pytest.raises(ConfigError, match=re.escape(str(list(files.values())[-1]))):
        mr.write_model_repository(tmp_path / "out", "onnxruntime", files)
    assert not (tmp_path / "out").exists()


def test_missing_stage_and_wrong_kind_of_model_file(tmp_path: Path) -> None:
    files = {stage: tmp_path / f"{stage.value}.onnx" for stage in GRAPHS}
    for path in files.values():
        path.write_bytes(b"onnx")
    partial = {s: p for s, p in files.items() if s is not Stage.SAM_HEADS}
    with pytest.raises(ConfigError, match="sam_heads"):
        mr.write_model_repository(tmp_path / "out", "onnxruntime", partial)
    with pytest.raises(ConfigError, match="no model file given for stage.*memory_unpack"):
        mr.write_model_repository(tmp_path / "out", "tensorrt", files)
    casts = {stage: tmp_path / f"{stage.value}.onnx" for stage in TRITON_GRAPHS}
    for path in casts.values():
        path.write_bytes(b"onnx")
    with pytest.raises(ConfigError, match="tensorrt"):
        mr.write_model_repository(tmp_path / "out", "tensorrt", {**files, **casts})
    assert not (tmp_path / "out").exists()


def test_failed_write_leaves_no_half_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mr.os, "replace", broken_replace)
    with pytest.raises(OutputNotWritable, match="No space left"):
        mr.write_model_repository(tmp_path, "onnxruntime")
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_modules_import_without_torch_onnx_or_tensorrt() -> None:
    code = (
        "import sys, medsam2_export.model_repository, medsam2_export.tensorrt_build\n"
        "bad = {'torch', 'onnx', 'tensorrt', 'tritonclient'} & set(sys.modules)\n"
        "assert not bad, bad\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "services"), str(REPO / "export")])}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


# ---------------------------------------------------------------------------------------------
# The track_step ensemble


def _map(entries: list[dict[str, Any]]) -> dict[str, str]:
    return {_only(e, "key"): _only(e, "value") for e in entries}


@pytest.mark.parametrize("backend", mr.BACKENDS)
def test_track_step_ensemble_follows_the_wiring(backend: str) -> None:
    cfg = _parse(mr.render_config(WIRE_TRACK_STEP, backend))
    assert _only(cfg, "name") == "track_step"
    assert _only(cfg, "platform") == "ensemble"
    # Not batched: one image for all the rows, so every tensor is declared with its full shape.
    assert _only(cfg, "max_batch_size") == 0
    for entries, tensors in ((cfg["input"], WIRE_TRACK_STEP.inputs), (cfg["output"], TRACK_STEP.outputs)):
        assert [_only(e, "name") for e in entries] == [t.name for t in tensors]
        for entry, tensor in zip(entries, tensors, strict=True):
            assert _only(entry, "data_type") == TRITON_TYPES[tensor.dtype.__name__]
            # No reshape: the steps declare per-item scalars as [1], and Triton compares the full shapes, [-1, 1].
            assert entry["dims"] == [tensor.shape[0], *_expected_dims(tensor.shape)] and "reshape" not in entry
    # One slice for every object, grey or RGB: the channel axis stays dynamic.
    assert cfg["input"][0]["dims"] == [1, -1, graphs.IMAGE_SIZE, graphs.IMAGE_SIZE]
    steps = _only(cfg, "ensemble_scheduling")["step"]
    assert len(steps) == len(TRITON_TRACK_STEP_WIRING)
    for step, (stage, inputs, outputs) in zip(steps, TRITON_TRACK_STEP_WIRING, strict=True):
        assert _only(step, "model_name") == stage.value
        assert _only(step, "model_version") == -1
        assert _map(step["input_map"]) == inputs
        assert _map(step["output_map"]) == outputs
    # Batching and placement belong to the steps; an ensemble has none of its own.
    assert not {"dynamic_batching", "instance_group", "model_warmup"} & set(cfg)


def test_pinned_track_step_runs_one_version() -> None:
    cfg = _parse(mr.render_fields(mr.ensemble_config_fields(WIRE_TRACK_STEP, version=3)))
    assert _only(cfg, "name") == "track_step_v3"
    steps = _only(cfg, "ensemble_scheduling")["step"]
    assert [_only(s, "model_version") for s in steps] == [3] * len(TRITON_TRACK_STEP_WIRING)
    assert [_only(s, "model_name") for s in steps] == [s.value for s, _, _ in TRITON_TRACK_STEP_WIRING]


def test_track_step_config_is_the_same_for_every_backend() -> None:
    assert len({mr.render_config(WIRE_TRACK_STEP, b) for b in mr.BACKENDS}) == 1


@pytest.mark.parametrize("backend", mr.BACKENDS)
def test_ensemble_parses_as_triton_model_config(backend: str) -> None:
    pb2 = _triton_model_config()
    if pb2 is None:
        pytest.skip("tritonclient[grpc] is not installed")
    from google.protobuf import text_format

    cfg = text_format.Parse(mr.render_config(WIRE_TRACK_STEP, backend), pb2.ModelConfig())
    assert cfg.platform == "ensemble"
    wiring = TRITON_TRACK_STEP_WIRING
    assert [s.model_name for s in cfg.ensemble_scheduling.step] == [s.value for s, _, _ in wiring]
    for step, (_, inputs, outputs) in zip(cfg.ensemble_scheduling.step, wiring, strict=True):
        assert dict(step.input_map) == inputs and dict(step.output_map) == outputs


def test_every_model_has_a_committed_config() -> None:
    for backend in mr.BACKENDS:
        names = {p.parent.name for p in (COMMITTED / backend).glob("*/config.pbtxt")}
        assert names == {s.value for s in (*GRAPHS, *TRITON_GRAPHS, *ENSEMBLES)}, backend


def _step(stage: Stage) -> tuple[dict[str, str], dict[str, str]]:
    return next((i, o) for s, i, o in TRACK_STEP_WIRING if s is stage)


def _rewired(stage: Stage, inputs: dict[str, str] | None = None, outputs: dict[str, str] | None = None):
    return tuple(
        (s, inputs if s is stage and inputs is not None else i, outputs if s is stage and outputs is not None else o)
        for s, i, o in TRACK_STEP_WIRING
    )


@pytest.mark.parametrize(
    ("wiring", "match"),
    [
        (TRACK_STEP_WIRING[1:], "slice_feat_s0"),  # no encoder: its features come from nowhere
        (TRACK_STEP_WIRING[:1] + TRACK_STEP_WIRING[2:], "feat_s2"),  # no broadcast: no features per object
        (_rewired(Stage.MASK_SELECT, {**_step(Stage.MASK_SELECT)[0], "obj_ptrs": "obj_ptrs"}), "obj_ptrs"),  # [19,256]
        (_rewired(Stage.SAM_HEADS, outputs={**_step(Stage.SAM_HEADS)[1], "obj_ptrs": "obj_ptrs"}), "already exists"),
        (_rewired(Stage.MEMORY_ENCODER, outputs={}), "maskmem_features"),
        (_rewired(Stage.IMAGE_ENCODER, {"pixels": "image"}), "image_encoder"),
        (TRACK_STEP_WIRING[:-1] + ((Stage.TRACK_STEP, {}, {}),), "not a stage graph"),
    ],
)
def test_broken_wiring_is_a_config_error(wiring: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        mr.check_wiring(TRACK_STEP, wiring)


# ---------------------------------------------------------------------------------------------
# Memories on the wire in bfloat16, and the CUDA memory pool


def test_memories_travel_as_bfloat16_and_are_cast_back_first() -> None:
    assert WIRE_TRACK_STEP.input("memory").dtype is graphs.BF16
    # Everything but the memories keeps the contract's dtype.
    assert [(t.name, t.shape) for t in WIRE_TRACK_STEP.inputs] == [(t.name, t.shape) for t in TRACK_STEP.inputs]
    assert [t.dtype for t in WIRE_TRACK_STEP.inputs if t.name != "memory"] == [
        t.dtype for t in TRACK_STEP.inputs if t.name != "memory"
    ]
    first, *rest = TRITON_TRACK_STEP_WIRING
    assert first == (Stage.MEMORY_UNPACK, {"memory": "memory"}, {"memory_f32": "memory_f32"})
    attention = next(i for s, i, _ in rest if s is Stage.MEMORY_ATTENTION)
    assert attention["memory"] == "memory_f32"
    mr.check_wiring(WIRE_TRACK_STEP, TRITON_TRACK_STEP_WIRING)


def test_memory_unpack_graph_is_an_exact_cast() -> None:
    import ml_dtypes
    import numpy as np
    import onnxruntime as ort

    from medsam2.backends.onnxruntime_backend import make_session

    # The project's session factory: a plain InferenceSession fails once another test made the shared pool.
    session = make_session(mr.triton_graph_onnx(Stage.MEMORY_UNPACK))
    values = np.random.default_rng(0).standard_normal((2, 3, graphs.MEM_DIM, graphs.FEAT, graphs.FEAT))
    memory = values.astype(ml_dtypes.bfloat16)
    feed = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(memory.view(np.uint16), 16)  # 16: ONNX BFLOAT16
    (out,) = session.run_with_ort_values(["memory_f32"], {"memory": feed})
    assert np.array_equal(out.numpy(), memory.astype(np.float32))


def test_feature_broadcast_graph_repeats_the_slice_exactly_once_per_row() -> None:
    import numpy as np

    from medsam2.backends.onnxruntime_backend import make_session

    session = make_session(mr.triton_graph_onnx(Stage.FEATURE_BROADCAST))
    rng = np.random.default_rng(1)
    spec = graphs.FEATURE_BROADCAST
    feeds = {t.name: rng.standard_normal((1, *t.shape[1:])).astype(np.float32) for t in spec.inputs[:3]}
    feeds["rows"] = np.ones((3, graphs.NUM_MASKMEM), np.float32)
    outputs = session.run([t.name for t in spec.outputs], feeds)
    for out, name in zip(outputs, ("feat_s0", "feat_s1", "feat_s2"), strict=True):
        assert out.shape == (3, *feeds[name].shape[1:])
        assert all(np.array_equal(row, feeds[name][0]) for row in out)
    cfg = _parse(mr.render_config(spec, "onnxruntime"))
    # Not batched (it takes a batch of 1 and gives a batch of B), and a copy gains nothing from batching.
    assert _only(cfg, "max_batch_size") == 0 and "dynamic_batching" not in cfg
    assert cfg["input"][3]["dims"] == [-1, -1]


def test_cuda_memory_pool_holds_a_full_batch_in_every_step() -> None:
    per_item = mr.ensemble_intermediate_bytes()
    # Every tensor a step produces, the float32 memories (7 slots) among them, and nothing else.
    produced = {t for _, _, outputs in TRITON_TRACK_STEP_WIRING for t in outputs.values()}
    assert set(per_item) == produced
    assert per_item["memory_f32"] == graphs.NUM_MASKMEM * graphs.MEM_DIM * graphs.FEAT**2 * 4
    assert per_item["feat_s0"] == 32 * graphs.LOW_RES**2 * 4
    pool = mr.cuda_memory_pool_bytes()
    need = sum(per_item.values()) * 16 * len(TRITON_TRACK_STEP_WIRING)
    assert need <= pool < need + 2**20 and pool % 2**20 == 0
    # The chart and the deployment guide carry this very number, so a change of the graphs cannot leave them behind.
    import yaml

    values = yaml.safe_load((REPO / "deploy" / "helm" / "medsam2" / "values.yaml").read_text())
    assert values["triton"]["cudaMemoryPoolBytes"] == pool
    assert f"{pool:,}" in (REPO / "docs" / "deploy.md").read_text()
