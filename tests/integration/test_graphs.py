"""The exported graphs: their structure, and their numbers against sam2 (fp32, <= 1e-4)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from medsam2.graphs import GRAPHS, Stage
from medsam2_export.model import load_model
from medsam2_export.onnx_export import find_graph
from medsam2_export.verify import TOLERANCE, _Checker, ort_session, verify

FORBIDDEN_OPS = {"If", "Loop", "Scan", "SequenceConstruct", "SplitToSequence", "DFT", "STFT"}
COMPLEX_TYPES = {onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128}
ALLOWED_DYNAMIC = {(0, "batch"), (1, "memory_slots"), (1, "channels")}
"""Axes that may be dynamic: the batch, the memory slots, and the image's channels (1 grey or 3 RGB)."""


@pytest.mark.parametrize("stage", list(GRAPHS))
def test_graph_structure(graphs: dict[str, Path], stage: Stage) -> None:
    model = onnx.load(str(find_graph(graphs["present"], stage)))
    onnx.checker.check_model(model)
    assert model.opset_import[0].version >= 17
    graph = model.graph
    ops = {n.op_type for n in graph.node}
    assert not ops & FORBIDDEN_OPS, f"{stage.value} has control flow or complex ops: {ops & FORBIDDEN_OPS}"
    for node in graph.node:
        if node.op_type == "Resize":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            assert attrs.get("antialias", 0) == 0, f"{stage.value}: antialiased Resize {node.name}"
    inferred = onnx.shape_inference.infer_shapes(model)
    for info in (*inferred.graph.value_info, *graph.input, *graph.output, *graph.initializer):
        elem = info.data_type if hasattr(info, "data_type") else info.type.tensor_type.elem_type
        assert elem not in COMPLEX_TYPES, f"{stage.value}: complex tensor {info.name}"
    spec = GRAPHS[stage]
    for value, tensor in ((graph.input, spec.inputs), (graph.output, spec.outputs)):
        assert [v.name for v in value] == [t.name for t in tensor]
        for v, t in zip(value, tensor, strict=False):
            dims = v.type.tensor_type.shape.dim
            assert len(dims) == len(t.shape)
            for axis, (dim, want) in enumerate(zip(dims, t.shape, strict=False)):
                if dim.dim_param:
                    assert (axis, dim.dim_param) in ALLOWED_DYNAMIC, f"{stage.value}.{v.name} axis {axis}"
                    assert want == -1
                else:
                    assert dim.dim_value == want, f"{stage.value}.{v.name} axis {axis}: {dim.dim_value} != {want}"
            assert v.type.tensor_type.elem_type == onnx.helper.np_dtype_to_tensor_dtype(np.dtype(t.dtype))


def test_verify_within_tolerance(checkpoints: dict[str, Path], graphs: dict[str, Path]) -> None:
    # One checkpoint is enough: both checkpoints export through the same code, and verify forces both object
    # states through the heads whatever the checkpoint predicts (the object-present and -absent cases below).
    report = verify(checkpoints["present"], onnx_dir=graphs["present"], seed=3)
    out = report.to_json()
    assert set(out["stages"]) == {s.value for s in GRAPHS}
    expected_outputs = {s.value: {t.name for t in GRAPHS[s].outputs} for s in GRAPHS}
    for stage, names in expected_outputs.items():
        assert names <= set(out["stages"][stage]), stage
    assert out["max_abs_err"] <= TOLERANCE, out
    # Both object states and both tracking directions went through the graphs.
    assert out["cases"]["object-present"] > 0 and out["cases"]["object-absent"] > 0
    assert out["cases"]["memory_attention/reverse-full"] == 1
    assert out["cases"]["memory_attention/init"] == 1


def test_verify_catches_a_wrong_graph(checkpoints: dict[str, Path], graphs: dict[str, Path]) -> None:
    # The absent checkpoint's heads judged against the present model (the object head differs), through
    # verify's own checker on the heads alone: the rest of a verify run is test_verify_within_tolerance.
    model = load_model(checkpoints["present"])
    sessions = {
        Stage.SAM_HEADS: ort_session(find_graph(graphs["absent"], Stage.SAM_HEADS), None),
        Stage.MASK_DOWNSAMPLER: ort_session(find_graph(graphs["present"], Stage.MASK_DOWNSAMPLER), None),
    }
    checker = _Checker(model, sessions, np.random.default_rng(3))
    checker.sam_heads("checkpoint")
    assert checker.report.stages["sam_heads"]["object_score_logits"] > 1.0
    assert checker.report.max_abs_err > TOLERANCE
