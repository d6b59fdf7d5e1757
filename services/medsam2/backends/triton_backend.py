"""Triton over gRPC: every stage graph, and the ``track_step`` ensemble, as a remote model of the same name.

A backend made for a numbered model ``version`` sends that version with every graph request and runs the
ensemble pinned to it (``track_step_v<N>``), so a session keeps its version whatever Triton loads later.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import numpy as np

from medsam2.engine.backend import batch_size, check_inputs
from medsam2.errors import BackendUnavailable, InvalidInput
from medsam2.graphs import (
    BF16,
    ENSEMBLES,
    GRAPHS,
    TRITON_ENSEMBLES,
    TRITON_GRAPHS,
    GraphSpec,
    Stage,
    pinned_ensemble_name,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

_TRITON_DTYPE = {
    np.dtype(np.uint8): "UINT8",
    np.dtype(np.float32): "FP32",
    np.dtype(np.int32): "INT32",
    np.dtype(np.int64): "INT64",
    np.dtype(BF16): "BF16",
}
_RETRYABLE = {"StatusCode.UNAVAILABLE"}
"""gRPC codes worth another try: the server is down, restarting or not reachable (connection refused or reset)."""
_INVALID = {"StatusCode.INVALID_ARGUMENT"}
_MAX_MESSAGE = 256 << 20
"""gRPC message limit: a batch of 16 slices with 10 memories is about 80 MB, beyond gRPC's 4 MB default."""


class TritonBackend:
    """Runs stage graphs and ensembles in a Triton server; retries with exponential backoff while it is unavailable."""

    name = "triton"
    precision = ""
    """The model repository's precision (ONNX Runtime fp32, or TensorRT FP16): the server's to say, not ours."""
    fused_track_step = True
    """Tracked frames go through the ``track_step`` ensemble in one call, so features never leave Triton."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 30,
        retries: int = 4,
        backoff_s: float = 0.25,
        max_batch: int = 16,
        version: int | None = None,
    ) -> None:
        try:
            import tritonclient.grpc as grpcclient
            from tritonclient.utils import InferenceServerException
        except ImportError as exc:
            raise BackendUnavailable(
                "tritonclient is not installed: pip install 'tritonclient[grpc]>=2.73,<3' 'protobuf>=6.30,<7'"
            ) from exc
        if timeout_s <= 0 or retries < 0 or backoff_s < 0 or max_batch < 1 or (version is not None and version < 1):
            raise InvalidInput(
                f"bad Triton client settings: timeout_s={timeout_s}, retries={retries}, "
                f"backoff_s={backoff_s}, max_batch={max_batch}, version={version}"
            )
        self.version = version
        """The model version every request runs (None: whatever Triton serves as the newest)."""
        self._grpc = grpcclient
        self._server_error = InferenceServerException
        self.url = url
        self.timeout_s = float(timeout_s)
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_batch = max_batch
        """The repository's max_batch_size: larger batches (more objects on a slice) go as several requests."""
        self._lock = threading.Lock()
        self._client: Any = None
        self._closed = False

    # -----------------------------------------------------------------------------------------

    def run(self, stage: Stage, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run ``stage`` (a stage graph or an ensemble) in Triton and return every output by name."""
        spec = _spec(stage)
        check_inputs(stage, inputs)
        batch = batch_size(spec, inputs)
        if batch > self.max_batch:
            # Only batch axes are cut: track_step's one image goes with every chunk.
            batched = {t.name for t in spec.inputs if t.shape[0] < 0}
            chunks = [
                self._run_checked(
                    stage, spec, {k: v[i : i + self.max_batch] if k in batched else v for k, v in inputs.items()}
                )
                for i in range(0, batch, self.max_batch)
            ]
            return {t.name: np.concatenate([c[t.name] for c in chunks]) for t in spec.outputs}
        return self._run_checked(stage, spec, inputs)

    def _run_checked(self, stage: Stage, spec: GraphSpec, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = batch_size(spec, inputs)
        request = self._infer_inputs(TRITON_ENSEMBLES.get(stage, spec), inputs)
        wanted = [self._grpc.InferRequestedOutput(t.name) for t in spec.outputs]
        model, version = self.model_of(stage)
        result = self._call(
            model,
            lambda client: client.infer(
                model, request, model_version=version, outputs=wanted, client_timeout=self.timeout_s
            ),
        )
        outputs = {}
        for t in spec.outputs:
            array = result.as_numpy(t.name)
            if array is None:
                raise BackendUnavailable(f"Triton at {self.url}: {stage.value} returned no {t.name}")
            # Per-item scalars travel as [B, 1] (Triton needs a non-empty dims); the contract says [B].
            if len(t.shape) == 1:
                array = array.reshape(batch)
            # Views of the response buffer are read-only; callers may update outputs in place, as with ONNX Runtime.
            outputs[t.name] = array if array.flags.writeable else array.copy()
        return outputs

    def _infer_inputs(self, wire: GraphSpec, inputs: Mapping[str, np.ndarray]) -> list[Any]:
        """Triton inputs in the wire dtypes of ``wire`` (``graphs.TRITON_ENSEMBLES``), cast only where exact."""
        infer_inputs = []
        for t in wire.inputs:
            array = np.ascontiguousarray(inputs[t.name])
            if array.dtype != t.dtype:
                array = _narrow_exactly(t.name, array, np.dtype(t.dtype))
            if array.ndim == 1:
                array = array.reshape(-1, 1)
            item = self._grpc.InferInput(t.name, list(array.shape), _TRITON_DTYPE[np.dtype(t.dtype)])
            item.set_data_from_numpy(array)
            infer_inputs.append(item)
        return infer_inputs

    def is_ready(self) -> bool:
        """Whether the server is live and ready and every model (stage graphs and ensembles) is ready."""
        if self._closed:
            return False
        try:
            client = self._connection()
            timeout = min(self.timeout_s, 5.0)
            if not (client.is_server_live(client_timeout=timeout) and client.is_server_ready(client_timeout=timeout)):
                return False
            models = [self.model_of(s) for s in (*GRAPHS, *TRITON_GRAPHS, *ENSEMBLES)]
            return all(client.is_model_ready(name, version, client_timeout=timeout) for name, version in models)
        except Exception:
            self._reset()
            return False

    def model_of(self, stage: Stage) -> tuple[str, str]:
        """The Triton model and model version (``""``: its newest) that run ``stage`` for this backend's version."""
        if self.version is None:
            return stage.value, ""
        if stage in ENSEMBLES:
            return pinned_ensemble_name(stage.value, self.version), ""
        return stage.value, str(self.version)

    def close(self) -> None:
        """Close the gRPC channel; later calls raise ``BackendUnavailable``."""
        self._closed = True
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:
                pass

    # -----------------------------------------------------------------------------------------

    def _connection(self) -> Any:
        if self._closed:
            raise BackendUnavailable(f"the Triton backend for {self.url} is closed")
        with self._lock:
            if self._client is None:
                self._client = self._grpc.InferenceServerClient(
                    self.url,
                    channel_args=[
                        ("grpc.max_send_message_length", _MAX_MESSAGE),
                        ("grpc.max_receive_message_length", _MAX_MESSAGE),
                        # A channel of our own: a fresh client must not inherit a shared connection still
                        # backing off from a dead server.
                        ("grpc.use_local_subchannel_pool", 1),
                        # Reconnect quickly once Triton is back, instead of gRPC's default backoff of up to 120 s.
                        ("grpc.initial_reconnect_backoff_ms", 100),
                        ("grpc.min_reconnect_backoff_ms", 100),
                        ("grpc.max_reconnect_backoff_ms", 1000),
                    ],
                )
            return self._client

    def _reset(self) -> None:
        # Only dropped, not closed: another thread may still be in a call on it, and closing would turn that
        # call's outcome into a closed-channel error. The channel closes once the last call lets go of it.
        with self._lock:
            self._client = None

    def _call(self, model: str, call: Callable[[Any], T]) -> T:
        """``call(client)``, retried with exponential backoff while Triton is unavailable."""
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                return call(self._connection())
            except self._server_error as exc:
                status = str(exc.status() or "")
                if status in _INVALID:
                    raise InvalidInput(
                        f"Triton at {self.url} rejected the request for {model}: {exc.message()}"
                    ) from exc
                if status not in _RETRYABLE:
                    raise BackendUnavailable(
                        f"Triton at {self.url} failed on {model}: {status or 'error'}: {exc.message()}"
                    ) from exc
                error: Exception = exc
            except OSError as exc:  # a socket-level failure outside gRPC's own status codes
                error = exc
            except ValueError as exc:  # grpc's "closed channel": close() ran while this call was starting
                if self._closed:
                    raise BackendUnavailable(f"the Triton backend for {self.url} was closed during {model}") from exc
                raise
            # A fresh channel connects at once when Triton is back, whatever the old one's reconnect state.
            self._reset()
            if attempt < self.retries:
                log.warning(
                    "Triton at %s unavailable for %s (attempt %d of %d), retrying in %.2f s",
                    self.url,
                    model,
                    attempt + 1,
                    self.retries + 1,
                    delay,
                )
                time.sleep(delay)
                delay *= 2
        raise BackendUnavailable(
            f"Triton at {self.url} is unavailable for model {model} after {self.retries + 1} attempts: {error}"
        ) from error


def _narrow_exactly(name: str, array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``array`` in the narrower wire ``dtype``; ``InvalidInput`` if that would change a number.

    The engine stores memories in bfloat16 and widens them for the graphs, so narrowing them back is exact;
    anything else would silently round, which the ONNX Runtime path would not.
    """
    narrow = array.astype(dtype)
    if not np.array_equal(narrow.astype(array.dtype), array):
        raise InvalidInput(
            f"{name} must hold {dtype.name} values to travel to Triton as {dtype.name} "
            "(the engine stores memories in bfloat16)"
        )
    return narrow


def _spec(stage: Stage) -> GraphSpec:
    spec = GRAPHS.get(stage) or ENSEMBLES.get(stage)
    if spec is None:
        raise InvalidInput(f"{stage} is neither a stage graph nor an ensemble")
    return spec
