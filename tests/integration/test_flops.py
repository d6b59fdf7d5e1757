"""The FLOP counter: hand-counted small graphs, and the real graphs' scaling with batch and memory slots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from medsam2.graphs import GRAPHS, Stage
from medsam2_export.flops import GraphFlops, StageFlops, measure_peak_flops, node_flops
from medsam2_export.onnx_export import sample_inputs


def test_node_flops_by_hand() -> None:
    assert node_flops("MatMul", [(2, 3, 4), (4, 5)], (2, 3, 5)) == 2 * 2 * 3 * 5 * 4
    assert node_flops("Gemm", [(3, 4), (4, 6)], (3, 6)) == 2 * 3 * 6 * 4
    # 8 output channels of 6x6 from 3 input channels and 3x3 kernels.
    assert node_flops("Conv", [(1, 3, 8, 8), (8, 3, 3, 3)], (1, 8, 6, 6)) == 2 * 8 * 36 * 3 * 9
    # A 2x2 stride-2 transposed convolution: every input element feeds 4 outputs of each of 5 channels.
    assert node_flops("ConvTranspose", [(1, 4, 3, 3), (4, 5, 2, 2)], (1, 5, 6, 6)) == 2 * 36 * 5 * 4
    with pytest.raises(ValueError, match="Relu"):
        node_flops("Relu", [(1,)], (1,))


def _tiny_graph(path: Path) -> None:
    """x [N,3,8,8] -> Conv(8,3x3) -> Reshape [N*8, 36] -> MatMul [36,5] -> Gemm(transA) with a [N*8, 7] weight."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(np.array([-1, 36], np.int64), "shape"),
        numpy_helper.from_array(rng.standard_normal((36, 5)).astype(np.float32), "m"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("Reshape", ["c", "shape"], ["r"]),
        helper.make_node("MatMul", ["r", "m"], ["y"]),
        helper.make_node("Gemm", ["y", "z"], ["g"], transA=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, ["M", 7]),
        ],
        [helper.make_tensor_value_info("g", TensorProto.FLOAT, [5, 7])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


@pytest.mark.parametrize("batch", [1, 3])
def test_graph_flops_use_the_shapes_of_the_run(tmp_path: Path, batch: int) -> None:
    _tiny_graph(tmp_path / "tiny.onnx")
    counter = GraphFlops(tmp_path / "tiny.onnx")
    rows = batch * 8  # the Reshape's output rows depend on the batch: shape inference alone cannot know them
    got = counter.count({"x": np.zeros((batch, 3, 8, 8), np.float32), "z": np.zeros((rows, 7), np.float32)})
    conv = 2 * batch * 8 * 36 * 27
    matmul = 2 * rows * 5 * 36
    gemm = 2 * 5 * 7 * rows  # A is y^T [5, rows]
    assert got == conv + matmul + gemm


@pytest.mark.slow
def test_real_graphs_scale_with_batch_and_memory_slots(graphs: dict[str, Path]) -> None:
    counter = StageFlops(graphs["present"])
    attention = GRAPHS[Stage.MEMORY_ATTENTION]
    by_slots = [counter.count(Stage.MEMORY_ATTENTION, sample_inputs(attention, batch=1, slots=s)) for s in (1, 2, 7)]
    # Attention over S memory slots is linear in S (keys, values and their projections), with a fixed part.
    step = by_slots[1] - by_slots[0]
    assert step > 0 and by_slots[2] == by_slots[0] + 6 * step
    assert counter.count(Stage.MEMORY_ATTENTION, sample_inputs(attention, batch=2, slots=7)) == 2 * by_slots[2]
    heads = counter.count(Stage.SAM_HEADS, sample_inputs(GRAPHS[Stage.SAM_HEADS], batch=1))
    assert 0.5e9 < heads < by_slots[0]  # the heads are small next to memory attention


def test_peak_is_measured() -> None:
    peak = measure_peak_flops(precision="fp32", threads=1, size=256, repeats=2)
    assert peak["flops_per_s"] > 1e8 and "256x256" in peak["method"]
