"""The CPU (Python-backend) variant of the model repository, without starting a server."""

from __future__ import annotations

from pathlib import Path

import pytest

from medsam2 import graphs
from medsam2.errors import ConfigError, NotFound
from medsam2.graphs import ENSEMBLES, GRAPHS, Stage
from medsam2_export import model_repository as mr
from medsam2_export import triton_cpu

pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
text_format = pytest.importorskip("google.protobuf.text_format")


def _parse(text: str):
    return text_format.Parse(text, pb2.ModelConfig())


@pytest.fixture
def fake_onnx_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "onnx"
    folder.mkdir()
    for stage in GRAPHS:
        (folder / f"{stage.value}.onnx").write_bytes(stage.value.encode())
    return folder


@pytest.fixture
def fake_env(tmp_path: Path) -> Path:
    env = tmp_path / "env"
    (env / "bin").mkdir(parents=True)
    (env / "bin" / "activate").write_text("")
    (env / "bin" / "python").write_text("")
    return env


@pytest.mark.parametrize("stage", list(GRAPHS), ids=lambda s: s.value)
def test_cpu_config_is_the_real_one_on_the_python_backend(stage: Stage, fake_env: Path) -> None:
    real = _parse(mr.render_config(GRAPHS[stage], "onnxruntime"))
    cpu = _parse(mr.render_fields(triton_cpu.cpu_config_fields(GRAPHS[stage], fake_env, threads=3)))
    assert (cpu.backend, cpu.platform) == ("python", "")
    assert cpu.name == real.name and cpu.max_batch_size == real.max_batch_size
    assert list(cpu.input) == list(real.input) and list(cpu.output) == list(real.output)
    assert cpu.dynamic_batching == real.dynamic_batching
    assert [(g.count, g.kind) for g in cpu.instance_group] == [(1, pb2.ModelInstanceGroup.KIND_CPU)]
    assert cpu.parameters["ORT_INTRA_OP_THREADS"].string_value == "3"
    assert cpu.parameters["EXECUTION_ENV_PATH"].string_value == str(fake_env.resolve())
    assert not cpu.model_warmup


def test_without_an_environment_no_execution_env_path() -> None:
    cpu = _parse(mr.render_fields(triton_cpu.cpu_config_fields(GRAPHS[Stage.SAM_HEADS])))
    assert "EXECUTION_ENV_PATH" not in cpu.parameters


def test_writes_a_complete_repository(fake_onnx_dir: Path, fake_env: Path, tmp_path: Path) -> None:
    out = tmp_path / "repo"
    written = triton_cpu.write_cpu_repository(fake_onnx_dir, out, fake_env)
    assert len(written) == 3 * (len(GRAPHS) + len(graphs.TRITON_GRAPHS)) + len(ENSEMBLES)
    model_py = triton_cpu.MODEL_PY.read_text()
    for stage in GRAPHS:
        assert (out / stage.value / "1" / "model.onnx").read_bytes() == stage.value.encode()
        assert (out / stage.value / "1" / "model.py").read_text() == model_py
        assert _parse((out / stage.value / "config.pbtxt").read_text()).backend == "python"
    # The ensemble is the committed one, with its (empty) version folder.
    ensemble = out / "track_step" / "config.pbtxt"
    committed = mr.committed_repository_dir() / "onnxruntime" / "track_step" / "config.pbtxt"
    assert ensemble.read_text() == committed.read_text()
    assert (out / "track_step" / "1").is_dir()


def test_reads_a_model_repository_as_its_source(fake_onnx_dir: Path, tmp_path: Path) -> None:
    real = tmp_path / "real"
    mr.write_model_repository(real, "onnxruntime", {s: fake_onnx_dir / f"{s.value}.onnx" for s in GRAPHS})
    triton_cpu.write_cpu_repository(real, tmp_path / "cpu")
    assert (tmp_path / "cpu" / "image_encoder" / "1" / "model.onnx").read_bytes() == b"image_encoder"


def test_environment_without_activate_is_a_config_error(fake_onnx_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="activate"):
        triton_cpu.write_cpu_repository(fake_onnx_dir, tmp_path / "out", tmp_path)
    assert not (tmp_path / "out").exists()


def test_bad_threads_and_gpu_instances_are_config_errors(fake_onnx_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="threads"):
        triton_cpu.write_cpu_repository(fake_onnx_dir, tmp_path / "out", threads=0)
    with pytest.raises(ConfigError, match="CPU"):
        triton_cpu.write_cpu_repository(fake_onnx_dir, tmp_path / "out", options=mr.RepositoryOptions())
    assert not (tmp_path / "out").exists()


def test_missing_graph_is_named(fake_onnx_dir: Path, tmp_path: Path) -> None:
    (fake_onnx_dir / "mask_select.onnx").unlink()
    with pytest.raises(NotFound, match="mask_select"):
        triton_cpu.write_cpu_repository(fake_onnx_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_server_command_stays_on_loopback(tmp_path: Path) -> None:
    ports = triton_cpu.TritonPorts(8001, 8000, 8002)
    server = triton_cpu.TritonProcess(tmp_path, triton_cpu.TritonInstall(tmp_path / "home"), ports=ports)
    cmd = server.command()
    for kind, port in (("grpc", 8001), ("http", 8000), ("metrics", 8002)):
        assert f"--{kind}-address=127.0.0.1" in cmd and f"--{kind}-port={port}" in cmd
    assert server.url == "127.0.0.1:8001"
    free = triton_cpu.TritonPorts.free()
    assert len({free.grpc, free.http, free.metrics}) == 3


def test_missing_installation_is_backend_unavailable(tmp_path: Path) -> None:
    from medsam2.errors import BackendUnavailable

    server = triton_cpu.TritonProcess(tmp_path, triton_cpu.TritonInstall(tmp_path / "nothing"))
    with pytest.raises(BackendUnavailable, match="test_deps.sh"):
        server.start(timeout_s=1)
    assert not server.running
