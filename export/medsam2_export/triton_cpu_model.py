"""Triton Python-backend model that runs one stage graph (``1/model.onnx``) with ONNX Runtime on the CPU.

``medsam2_export.triton_cpu`` copies this file into each model's version folder as
``model.py``. It runs inside Triton's Python stub, in the models' own environment
(numpy<2, onnxruntime), so it imports nothing from this project.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

try:  # Only the Triton stub provides this module; importing the file elsewhere must still work.
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover - outside Triton
    pb_utils = None

THREADS_PARAMETER = "ORT_INTRA_OP_THREADS"


def _parameter(config: dict[str, Any], key: str, default: str) -> str:
    return config.get("parameters", {}).get(key, {}).get("string_value", default)


class TritonPythonModel:
    """One ONNX Runtime session; requests of one dynamic batch are run together when their shapes agree."""

    def initialize(self, args: dict[str, str]) -> None:
        """Create the ONNX Runtime session from the model's version folder."""
        import onnxruntime as ort

        config = json.loads(args["model_config"])
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(_parameter(config, THREADS_PARAMETER, "1"))
        opts.inter_op_num_threads = 1
        # Every model is its own process with its own pool: spinning pools would steal the cores from each other.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.input_ranks = {i.name: len(i.shape) for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]
        # Per-item scalars are declared dims [1] (with reshape []) in the config: send them back as [B, 1].
        self.output_dims = {o["name"]: list(o["dims"]) for o in config["output"]}
        # numpy has no bfloat16: such inputs go from Triton to ONNX Runtime through DLPack, one request at a time.
        self.dlpack_inputs = {i["name"] for i in config["input"] if i["data_type"] == "TYPE_BF16"}
        self.ort = ort

    def execute(self, requests: list[Any]) -> list[Any]:
        """Run every request of a batch, in one ONNX Runtime call when their shapes allow it."""
        if self.dlpack_inputs:
            return [self._run_dlpack(r) for r in requests]
        try:
            feeds = [self._feeds(r) for r in requests]
        except Exception as exc:
            return [self._error(exc) for _ in requests]
        if len(feeds) > 1 and _same_shapes(feeds):
            sizes = [next(iter(f.values())).shape[0] for f in feeds]
            merged = {name: np.concatenate([f[name] for f in feeds]) for name in self.input_names}
            try:
                outputs = self.session.run(self.output_names, merged)
            except Exception as exc:
                return [self._error(exc) for _ in requests]
            bounds = np.cumsum([0, *sizes])
            return [self._response([o[a:b] for o in outputs]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        responses = []
        for feed in feeds:
            try:
                responses.append(self._response(self.session.run(self.output_names, feed)))
            except Exception as exc:
                responses.append(self._error(exc))
        return responses

    def _run_dlpack(self, request: Any) -> Any:
        try:
            from onnxruntime.capi import _pybind_state as ort_c

            feeds = {}
            for name in self.input_names:
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                if tensor is None:
                    raise ValueError(f"missing input {name}")
                if name in self.dlpack_inputs:
                    feeds[name] = ort_c.OrtValue.from_dlpack(tensor.to_dlpack())
                else:
                    feeds[name] = self.ort.OrtValue.ortvalue_from_numpy(tensor.as_numpy())._ortvalue
            outputs = self.session._sess.run_with_ort_values(feeds, self.output_names, None)
            return self._response([o.numpy() for o in outputs])
        except Exception as exc:
            return self._error(exc)

    def _feeds(self, request: Any) -> dict[str, np.ndarray]:
        feeds = {}
        for name in self.input_names:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise ValueError(f"missing input {name}")
            array = tensor.as_numpy()
            # Triton may hand a per-item scalar over as [B, 1] or, after the config's reshape, as [B].
            if self.input_ranks[name] == 1 and array.ndim == 2:
                array = array.reshape(-1)
            feeds[name] = array
        return feeds

    def _response(self, outputs: list[np.ndarray]) -> Any:
        tensors = []
        for name, array in zip(self.output_names, outputs, strict=True):
            if array.ndim == 1 and self.output_dims.get(name) == [1]:
                array = array.reshape(-1, 1)
            tensors.append(pb_utils.Tensor(name, np.ascontiguousarray(array)))
        return pb_utils.InferenceResponse(output_tensors=tensors)

    @staticmethod
    def _error(exc: Exception) -> Any:
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{type(exc).__name__}: {exc}"))

    def finalize(self) -> None:
        """Drop the session."""
        self.session = None


def _same_shapes(feeds: list[dict[str, np.ndarray]]) -> bool:
    first = {k: v.shape[1:] for k, v in feeds[0].items()}
    return all({k: v.shape[1:] for k, v in f.items()} == first for f in feeds[1:])
