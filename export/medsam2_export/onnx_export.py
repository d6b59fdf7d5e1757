"""Export the stage wrappers to ONNX, one file per graph, named as in ``medsam2.graphs``."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from medsam2.backends.onnxruntime_backend import locate_graph
from medsam2.errors import OutputNotWritable
from medsam2.graphs import GRAPHS, NUM_MASKMEM, POINT_LABEL_UNUSED, GraphSpec, Stage
from medsam2.io.atomic import write_atomic
from medsam2_export.wrappers import (
    ImageEncoderGraph,
    MaskDownsamplerGraph,
    MaskSelectGraph,
    MemoryAttentionGraph,
    MemoryEncoderGraph,
    SamHeadsGraph,
)

log = logging.getLogger(__name__)

OPSET = 17
WRAPPERS = {
    Stage.IMAGE_ENCODER: ImageEncoderGraph,
    Stage.MEMORY_ATTENTION: MemoryAttentionGraph,
    Stage.SAM_HEADS: SamHeadsGraph,
    Stage.MEMORY_ENCODER: MemoryEncoderGraph,
    Stage.MASK_DOWNSAMPLER: MaskDownsamplerGraph,
    Stage.MASK_SELECT: MaskSelectGraph,
}
_AXIS_NAMES = {0: "batch", 1: "memory_slots"}
_CHANNEL_AXIS_NAME = "channels"


def _axis_name(tensor: str, axis: int) -> str:
    """The symbolic name of a dynamic axis: the image's axis 1 is its channels, elsewhere memory slots."""
    return _CHANNEL_AXIS_NAME if tensor == "image" and axis == 1 else _AXIS_NAMES[axis]


def graph_file(out_dir: Path, stage: Stage) -> Path:
    """Where ``export_all`` puts a stage's ONNX file."""
    return Path(out_dir) / f"{stage.value}.onnx"


def find_graph(folder: Path, stage: Stage) -> Path:
    """A stage's ONNX file in a folder of ``<stage>.onnx`` files or in a Triton model repository."""
    return locate_graph(folder, stage)


def sample_inputs(spec: GraphSpec, batch: int = 2, slots: int = NUM_MASKMEM, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs that fit ``spec`` (dynamic axes set to ``batch`` and ``slots``)."""
    rng = np.random.default_rng(seed)
    inputs: dict[str, np.ndarray] = {}
    for t in spec.inputs:
        # Axis 0 is the batch where it is dynamic; a fixed one (track_step's one image) keeps its size. A grey
        # image: the graph replicates it to RGB, so the traced graph broadcasts 1 or 3 channels.
        dynamic = 1 if t.name == "image" else slots
        shape = tuple((batch if i == 0 else dynamic) if d < 0 else d for i, d in enumerate(t.shape))
        if t.dtype is np.uint8:
            inputs[t.name] = rng.integers(0, 256, shape, dtype=np.uint8)
        elif t.name == "memory_tpos":
            inputs[t.name] = rng.integers(0, NUM_MASKMEM, shape).astype(np.int64)
        elif t.name == "point_labels":
            inputs[t.name] = rng.integers(POINT_LABEL_UNUSED, 4, shape).astype(np.int32)
        elif t.name in {"memory_valid", "obj_ptr_valid", "has_mask_input", "binarize", "no_memory"}:
            inputs[t.name] = (rng.random(shape) > 0.3).astype(np.float32)
        elif t.name == "point_coords":
            inputs[t.name] = (rng.random(shape) * 512).astype(np.float32)
        else:
            inputs[t.name] = rng.standard_normal(shape).astype(np.float32)
    if "memory_valid" in inputs:
        inputs["memory_valid"][:, 0] = 1.0  # every bank has at least one memory
    return inputs


def export_graph(model: torch.nn.Module, stage: Stage, path: Path) -> Path:
    """Export one stage of ``model`` to ``path`` at opset 17 with the contract's names and axes."""
    spec = GRAPHS[stage]
    wrapper = WRAPPERS[stage](model).eval()
    example = tuple(torch.from_numpy(a) for a in sample_inputs(spec).values())
    dynamic_axes = {
        t.name: {axis: _axis_name(t.name, axis) for axis in t.dynamic_axes} for t in (*spec.inputs, *spec.outputs)
    }

    def write(tmp: Path) -> None:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about python ints are expected and harmless here
            torch.onnx.export(
                wrapper,
                example,
                str(tmp),
                opset_version=OPSET,
                dynamo=False,
                input_names=[t.name for t in spec.inputs],
                output_names=[t.name for t in spec.outputs],
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
            )
        _declare_contract_shapes(tmp, spec)

    return write_atomic(path, write)


def _declare_contract_shapes(path: Path, spec: GraphSpec) -> None:
    # The tracer leaves some output dims symbolic (e.g. after the FPN's nearest upsampling);
    # the contract fixes them, so consumers (TensorRT, Triton) see static shapes.
    import onnx

    model = onnx.load(str(path))
    for values, tensors in ((model.graph.input, spec.inputs), (model.graph.output, spec.outputs)):
        for value, tensor in zip(values, tensors, strict=False):
            for axis, (dim, want) in enumerate(zip(value.type.tensor_type.shape.dim, tensor.shape, strict=False)):
                if want < 0:
                    dim.dim_param = _axis_name(tensor.name, axis)
                else:
                    dim.dim_value = want
    onnx.save(model, str(path))


def export_all(model: torch.nn.Module, out_dir: Path, stages: tuple[Stage, ...] = tuple(GRAPHS)) -> dict[Stage, Path]:
    """Export every stage graph of ``model`` into ``out_dir``."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputNotWritable(f"cannot write ONNX graphs to {out_dir}: {exc.strerror or exc}") from exc
    paths = {}
    for stage in stages:
        paths[stage] = export_graph(model, stage, graph_file(out_dir, stage))
        log.info("exported %s -> %s", stage.value, paths[stage])
    return paths
