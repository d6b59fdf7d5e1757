"""Floating-point operations of the stage graphs, counted from their MatMul, Gemm and Conv nodes.

A FLOP here is one multiply or one add of a multiply-accumulate (2 per MAC), the convention of peak
FLOP/s figures. Only the four contraction ops are counted: together they are nearly all of the work (the
elementwise ops, softmax and normalisations add a few percent, and run far from peak anyway).

The shapes are the ones the graph really has for given inputs: ONNX's own shape inference leaves most of
them unknown here (the reshapes of attention are data-dependent on ``Shape`` ops), so the counter asks
ONNX Runtime, running the graph once with a ``Shape`` output added for every operand, which returns only
small integer vectors, never the intermediate tensors themselves.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

COUNTED_OPS = ("MatMul", "Gemm", "Conv", "ConvTranspose")


def node_flops(op_type: str, operands: list[tuple[int, ...]], output: tuple[int, ...]) -> int:
    """FLOPs of one contraction node from its operand shapes (data first, then weights) and its output shape."""
    if op_type == "MatMul":
        return 2 * math.prod(output) * operands[0][-1]
    if op_type == "Gemm":
        # out [M, N]; A is [M, K] (the caller swaps it when the node has transA).
        return 2 * math.prod(output) * operands[0][1]
    if op_type == "Conv":
        # Each output element is a dot product over (Cin / group) x kernel.
        return 2 * math.prod(output) * math.prod(operands[1][1:])
    if op_type == "ConvTranspose":
        # Each input element is scattered into (Cout / group) x kernel outputs.
        return 2 * math.prod(operands[0]) * math.prod(operands[1][1:])
    raise ValueError(f"not a counted op: {op_type}")


class GraphFlops:
    """Counts one ONNX graph's FLOPs for concrete inputs; a graph is loaded once and run once per new shape."""

    def __init__(self, path: Path) -> None:
        import onnx

        from medsam2.backends.onnxruntime_backend import make_session

        model = onnx.load(str(path))
        graph = model.graph
        constant = {i.name for i in graph.initializer}
        known = {i.name for i in graph.input}
        self._nodes: list[tuple[str, list[str], str, bool]] = []
        probed: dict[str, str] = {}
        for node in graph.node:
            if node.op_type not in COUNTED_OPS:
                continue
            names = [n for n in node.input[:2] if n] + [node.output[0]]
            trans_a = any(a.name == "transA" and a.i for a in node.attribute)
            self._nodes.append((node.op_type, names[:-1], names[-1], trans_a))
            for name in names:
                if name not in constant and name not in known and name not in probed:
                    probed[name] = f"{name}__flops_shape"
        for name, shape_name in probed.items():
            graph.node.append(onnx.helper.make_node("Shape", [name], [shape_name]))
            graph.output.append(onnx.helper.make_tensor_value_info(shape_name, onnx.TensorProto.INT64, [None]))
        self._probed = probed
        self._constant_shapes = {i.name: tuple(i.dims) for i in graph.initializer}
        self._input_names = [i.name for i in graph.input]
        self._session = make_session(model.SerializeToString())
        self._cache: dict[tuple, int] = {}

    def count(self, inputs: Mapping[str, np.ndarray]) -> int:
        """FLOPs of one run on inputs of these shapes (the values do not matter)."""
        key = tuple(tuple(inputs[n].shape) for n in self._input_names)
        if key not in self._cache:
            self._cache[key] = self._count(inputs)
        return self._cache[key]

    def _count(self, inputs: Mapping[str, np.ndarray]) -> int:
        names = list(self._probed.values())
        values = self._session.run(names, {n: inputs[n] for n in self._input_names}) if names else []
        shapes = dict(self._constant_shapes)
        shapes.update({n: tuple(inputs[n].shape) for n in self._input_names})
        shapes.update(
            {tensor: tuple(int(d) for d in value) for tensor, value in zip(self._probed, values, strict=False)}
        )
        total = 0
        for op, operands, out, trans_a in self._nodes:
            operand_shapes = [shapes[n] for n in operands]
            if trans_a:
                operand_shapes[0] = operand_shapes[0][::-1]
            total += node_flops(op, operand_shapes, shapes[out])
        return total


class StageFlops:
    """FLOPs per stage call for a folder of graphs, counting each graph lazily."""

    def __init__(self, graphs_dir: Path) -> None:
        self._graphs_dir = Path(graphs_dir)
        self._graphs: dict = {}

    def count(self, stage, inputs: Mapping[str, np.ndarray]) -> int:  # noqa: ANN001 - medsam2.graphs.Stage
        """FLOPs of one call of ``stage`` on inputs of these shapes."""
        from medsam2.backends.onnxruntime_backend import locate_graph

        if stage not in self._graphs:
            self._graphs[stage] = GraphFlops(locate_graph(self._graphs_dir, stage))
        return self._graphs[stage].count(inputs)


def measure_peak_flops(*, precision: str = "fp32", threads: int = 0, size: int = 2048, repeats: int = 5) -> dict:
    """This CPU's achievable FLOP/s: the best of ``repeats`` timed ``size``-square matmuls.

    With OpenVINO installed the matmul runs in its CPU plug-in (oneDNN) with the same thread count and
    precision hint as the backend, so bf16 gets its own peak; without it, fp32 is timed with numpy's BLAS.
    A measured large matmul, not flags x clock: it is what a well-blocked kernel reaches on this machine
    (turbo, memory, and the neighbours sharing it included), which is the fair ceiling for the graphs.
    """
    import os
    import time

    flops = 2 * size**3
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    try:
        import openvino
        import openvino.opset13 as ops
    except ImportError:
        openvino = None
    if openvino is None:
        if precision != "fp32":
            raise ValueError(f"measuring the {precision} peak needs OpenVINO")
        run, method = (lambda: a @ b), f"numpy matmul {size}x{size} fp32, best of {repeats}"
    else:
        x = ops.parameter([size, size], np.float32, name="a")
        model = openvino.Model([ops.matmul(x, ops.constant(b), False, False)], [x], "peak")
        config = {
            "INFERENCE_NUM_THREADS": threads or (os.cpu_count() or 1),
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            "PERFORMANCE_HINT": "LATENCY",
        }
        request = openvino.Core().compile_model(model, "CPU", config).create_infer_request()
        run = lambda: request.infer({"a": a})  # noqa: E731
        method = (
            f"OpenVINO CPU matmul {size}x{size} ({precision}, {config['INFERENCE_NUM_THREADS']} threads), "
            f"best of {repeats}"
        )
    run()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return {"flops_per_s": flops / best, "method": method}
