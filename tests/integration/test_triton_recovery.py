"""Triton dies mid-use and comes back: the backend fails fast and clearly, then works again on the same ports."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from medsam2.backends.onnxruntime_backend import OnnxRuntimeBackend
from medsam2.errors import BackendUnavailable
from medsam2.graphs import GRAPHS, Stage
from medsam2_export.onnx_export import sample_inputs
from triton_server import triton_process, triton_repository  # noqa: F401 - session fixture

FAIL_WITHIN_S = 10.0

pytestmark = pytest.mark.slow


def test_killed_triton_is_unavailable_then_recovers_on_restart(
    triton_repository: Path,  # noqa: F811
    graphs: dict[str, Path],
) -> None:
    from medsam2.backends.triton_backend import TritonBackend

    small = sample_inputs(GRAPHS[Stage.MASK_DOWNSAMPLER], batch=1, seed=1)
    want = OnnxRuntimeBackend(graphs["present"]).run(Stage.MASK_DOWNSAMPLER, small)
    # A server of its own: killing the session's shared one would break the other tests.
    with triton_process(triton_repository) as server:
        backend = TritonBackend(server.url)  # the defaults: 4 retries from 0.25 s, about 4 s in all
        try:
            assert backend.is_ready()
            np.testing.assert_array_equal(backend.run(Stage.MASK_DOWNSAMPLER, small)["mask_input"], want["mask_input"])

            # Kill the server while a slow call (four slices through the encoder) is in flight.
            slow = sample_inputs(GRAPHS[Stage.IMAGE_ENCODER], batch=4, seed=2)
            outcome: dict[str, object] = {}

            def call() -> None:
                try:
                    backend.run(Stage.IMAGE_ENCODER, slow)
                except Exception as exc:
                    outcome["error"] = exc
                outcome["at"] = time.monotonic()

            worker = threading.Thread(target=call)
            worker.start()
            time.sleep(0.5)
            killed_at = time.monotonic()
            server.kill()
            worker.join(FAIL_WITHIN_S + 5)
            assert not worker.is_alive(), "run() did not return after Triton was killed"
            assert isinstance(outcome.get("error"), BackendUnavailable), outcome
            assert outcome["at"] - killed_at < FAIL_WITHIN_S  # type: ignore[operator]
            assert server.url in str(outcome["error"]) and "image_encoder" in str(outcome["error"])

            # While it is down: every call fails within the bound, and readiness says so.
            start = time.monotonic()
            with pytest.raises(BackendUnavailable, match="mask_downsampler"):
                backend.run(Stage.MASK_DOWNSAMPLER, small)
            assert time.monotonic() - start < FAIL_WITHIN_S
            assert not backend.is_ready()

            # Back on the same ports: the same client object recovers.
            server.start()
            assert backend.is_ready()
            np.testing.assert_array_equal(backend.run(Stage.MASK_DOWNSAMPLER, small)["mask_input"], want["mask_input"])
        finally:
            backend.close()
