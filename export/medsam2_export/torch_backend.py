"""The stage wrappers in PyTorch, behind the same backend protocol (CUDA machines, debugging)."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from medsam2.engine.backend import check_inputs
from medsam2.errors import BackendUnavailable
from medsam2.graphs import GRAPHS, Stage
from medsam2_export.model import load_model
from medsam2_export.onnx_export import WRAPPERS

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class TorchBackend:
    """Runs each stage wrapper with torch, optionally under autocast (bf16/fp16) on CUDA."""

    fused_track_step = False

    def __init__(self, checkpoint: Path, device: str = "cpu", precision: str = "fp32", threads: int = 0) -> None:
        if precision not in DTYPES:
            raise BackendUnavailable(f"unknown precision {precision!r}: choose one of {', '.join(DTYPES)}")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailable(f"device {device} requested but CUDA is not available to torch")
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        self.precision = precision
        self.name = f"torch-{self.device.type}-{precision}"
        model = load_model(checkpoint).to(self.device)
        self._wrappers = {stage: WRAPPERS[stage](model).eval().to(self.device) for stage in GRAPHS}

    def is_ready(self) -> bool:
        """In-process graphs are ready once constructed."""
        return True

    def run(self, stage: Stage, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one stage wrapper."""
        check_inputs(stage, inputs)
        spec = GRAPHS[stage]
        args = [torch.from_numpy(np.ascontiguousarray(inputs[t.name])).to(self.device) for t in spec.inputs]
        dtype = DTYPES[self.precision]
        autocast = torch.autocast(self.device.type, dtype=dtype) if dtype is not None else nullcontext()
        with torch.inference_mode(), autocast:
            outputs = self._wrappers[stage](*args)
        if isinstance(outputs, torch.Tensor):
            outputs = (outputs,)
        return {t.name: o.float().cpu().numpy() for t, o in zip(spec.outputs, outputs, strict=False)}

    def close(self) -> None:
        """Free the model."""
        self._wrappers.clear()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
