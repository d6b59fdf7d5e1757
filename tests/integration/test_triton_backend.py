"""The Triton backend against a real tritonserver: every graph and the track-step ensemble equal ONNX Runtime."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

import patience
from medsam2.backends.onnxruntime_backend import OnnxRuntimeBackend
from medsam2.engine.backend import StageBackend
from medsam2.engine.resize import from_bfloat16_bits, to_bfloat16_bits
from medsam2.errors import BackendUnavailable, InvalidInput
from medsam2.graphs import ENSEMBLES, GRAPHS, TRACK_STEP_WIRING, Stage
from medsam2.testing.composed_backend import compose_track_step
from medsam2_export.onnx_export import sample_inputs
from medsam2_export.triton_cpu import free_port
from triton_server import model_counts, triton_repository, triton_server, triton_url  # noqa: F401 - session fixtures

TOLERANCE = 1e-5

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def triton(triton_url: str):  # noqa: F811 - a TritonBackend; tritonclient is imported lazily
    from medsam2.backends.triton_backend import TritonBackend

    backend = TritonBackend(triton_url, timeout_s=patience.TRITON_CALL_S)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def embedded(graphs: dict[str, Path]) -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend(graphs["present"])


def _max_errors(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> dict[str, float]:
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name].shape == want[name].shape, name
        assert got[name].dtype == want[name].dtype, name
    return {name: float(np.max(np.abs(got[name] - want[name]))) for name in want}


def test_backend_protocol_and_readiness(triton) -> None:
    assert isinstance(triton, StageBackend)
    assert triton.name == "triton"
    assert triton.fused_track_step is True
    assert triton.is_ready()


@pytest.mark.parametrize("stage", list(GRAPHS), ids=lambda s: s.value)
def test_each_graph_matches_onnxruntime(triton, embedded: OnnxRuntimeBackend, stage: Stage) -> None:
    inputs = sample_inputs(GRAPHS[stage], batch=2, seed=3)
    got = triton.run(stage, inputs)
    errors = _max_errors(got, embedded.run(stage, inputs))
    assert max(errors.values()) <= TOLERANCE, errors
    assert all(a.flags.writeable for a in got.values())  # like ONNX Runtime's, callers may update them in place


def test_rgb_and_grey_images_go_through_one_triton_model(triton, embedded: OnnxRuntimeBackend) -> None:
    grey = sample_inputs(GRAPHS[Stage.IMAGE_ENCODER], batch=1, seed=4)["image"]
    rgb = np.random.default_rng(5).integers(0, 256, (1, 3, *grey.shape[2:]), dtype=np.uint8)
    for image in (rgb, np.repeat(grey, 3, axis=1)):
        errors = _max_errors(
            triton.run(Stage.IMAGE_ENCODER, {"image": image}), embedded.run(Stage.IMAGE_ENCODER, {"image": image})
        )
        assert max(errors.values()) <= TOLERANCE, errors
    # A grey plane is replicated inside the graph: one channel or three equal ones give the same features.
    one, three = (embedded.run(Stage.IMAGE_ENCODER, {"image": g}) for g in (grey, np.repeat(grey, 3, axis=1)))
    assert max(_max_errors(one, three).values()) <= TOLERANCE


def _composed_track_step(backend: OnnxRuntimeBackend, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The ensemble's wiring, run stage by stage in ONNX Runtime."""
    return compose_track_step(backend, inputs)


def test_wiring_is_the_documented_stage_order() -> None:
    # image_encoder (once per slice) -> its features per object -> memory_attention -> sam_heads -> mask_select
    # -> memory_encoder, as the engine runs it.
    assert [s for s, _, _ in TRACK_STEP_WIRING] == [
        Stage.IMAGE_ENCODER,
        Stage.FEATURE_BROADCAST,
        Stage.MEMORY_ATTENTION,
        Stage.SAM_HEADS,
        Stage.MASK_SELECT,
        Stage.MEMORY_ENCODER,
    ]


def test_track_step_ensemble_matches_the_stage_by_stage_composition(
    triton,
    embedded: OnnxRuntimeBackend,
) -> None:
    inputs = sample_inputs(ENSEMBLES[Stage.TRACK_STEP], batch=2, seed=5)
    inputs["no_memory"][:] = 0.0  # a tracked frame: attend to the memories
    # Memories as the engine keeps them: bfloat16 values, which travel to Triton as bfloat16 and back exactly.
    inputs["memory"] = from_bfloat16_bits(to_bfloat16_bits(inputs["memory"]))
    errors = _max_errors(triton.run(Stage.TRACK_STEP, inputs), _composed_track_step(embedded, inputs))
    assert max(errors.values()) <= TOLERANCE, errors


def test_track_step_encodes_its_one_image_once_for_every_row(triton, triton_url: str, embedded) -> None:  # noqa: F811
    inputs = sample_inputs(ENSEMBLES[Stage.TRACK_STEP], batch=4, seed=7)
    assert inputs["image"].shape == (1, 1, 512, 512)  # one slice for the four objects
    inputs["no_memory"][:] = 0.0
    inputs["memory"] = from_bfloat16_bits(to_bfloat16_bits(inputs["memory"]))
    before = {m: model_counts(triton_url, m) for m in ("image_encoder", "memory_attention")}
    got = triton.run(Stage.TRACK_STEP, inputs)
    after = {m: model_counts(triton_url, m) for m in ("image_encoder", "memory_attention")}
    assert tuple(a - b for a, b in zip(after["image_encoder"], before["image_encoder"], strict=True)) == (1, 1)
    assert after["memory_attention"][0] - before["memory_attention"][0] == 4
    errors = _max_errors(got, _composed_track_step(embedded, inputs))
    assert max(errors.values()) <= TOLERANCE, errors
    # Each row is its own object: the same result as that object alone on the slice.
    alone = {k: (v if k == "image" else v[2:3]) for k, v in inputs.items()}
    errors = _max_errors({k: v[2:3] for k, v in got.items()}, triton.run(Stage.TRACK_STEP, alone))
    assert max(errors.values()) <= TOLERANCE, errors


def test_memories_that_are_not_bfloat16_are_refused_not_rounded(triton) -> None:
    inputs = sample_inputs(ENSEMBLES[Stage.TRACK_STEP], batch=1, seed=6)  # float32 noise: not bfloat16 values
    with pytest.raises(InvalidInput, match="memory must hold bfloat16 values"):
        triton.run(Stage.TRACK_STEP, inputs)


def test_memory_slot_axis_is_dynamic_through_triton(triton, embedded: OnnxRuntimeBackend) -> None:
    inputs = sample_inputs(GRAPHS[Stage.MEMORY_ATTENTION], batch=1, slots=3, seed=8)
    errors = _max_errors(triton.run(Stage.MEMORY_ATTENTION, inputs), embedded.run(Stage.MEMORY_ATTENTION, inputs))
    assert max(errors.values()) <= TOLERANCE, errors


def test_wrong_dtype_is_invalid_input_before_any_call(triton) -> None:
    inputs = sample_inputs(GRAPHS[Stage.MASK_DOWNSAMPLER], batch=1)
    inputs["mask"] = inputs["mask"].astype(np.float64)
    with pytest.raises(InvalidInput, match="mask: expected dtype float32"):
        triton.run(Stage.MASK_DOWNSAMPLER, inputs)


def test_request_triton_refuses_is_invalid_input(triton_url: str) -> None:  # noqa: F811
    from medsam2.backends.triton_backend import TritonBackend

    # A client that believes in a larger max batch than the repository's 16 sends 17 at once; Triton refuses.
    backend = TritonBackend(triton_url, max_batch=32, timeout_s=patience.TRITON_CALL_S)
    inputs = sample_inputs(GRAPHS[Stage.MASK_SELECT], batch=17)
    with pytest.raises(InvalidInput, match="mask_select"):
        backend.run(Stage.MASK_SELECT, inputs)
    assert backend.is_ready()
    backend.close()


def test_more_objects_than_max_batch_go_as_several_requests(triton, embedded: OnnxRuntimeBackend) -> None:
    inputs = sample_inputs(GRAPHS[Stage.MASK_SELECT], batch=triton.max_batch + 3, seed=11)
    errors = _max_errors(triton.run(Stage.MASK_SELECT, inputs), embedded.run(Stage.MASK_SELECT, inputs))
    assert max(errors.values()) <= TOLERANCE, errors


def test_unreachable_server_is_backend_unavailable_naming_url_and_model() -> None:
    from medsam2.backends.triton_backend import TritonBackend

    url = f"127.0.0.1:{free_port()}"
    backend = TritonBackend(url, timeout_s=2, retries=2, backoff_s=0.05)
    start = time.monotonic()
    with pytest.raises(BackendUnavailable) as info:
        backend.run(Stage.MASK_DOWNSAMPLER, sample_inputs(GRAPHS[Stage.MASK_DOWNSAMPLER], batch=1))
    assert time.monotonic() - start < 5
    assert url in str(info.value) and "mask_downsampler" in str(info.value)
    assert not backend.is_ready()
    backend.close()
    with pytest.raises(BackendUnavailable, match="closed"):
        backend.run(Stage.MASK_DOWNSAMPLER, sample_inputs(GRAPHS[Stage.MASK_DOWNSAMPLER], batch=1))


def test_concurrent_requests_batched_by_triton_keep_their_own_results(
    triton,
    embedded: OnnxRuntimeBackend,
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    # Requests that reach the dynamic batcher together are run as one batch inside the Python model and split
    # again; each caller must get exactly its own rows.
    requests = [sample_inputs(GRAPHS[Stage.MEMORY_ENCODER], batch=1 + i % 2, seed=20 + i) for i in range(6)]
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda x: triton.run(Stage.MEMORY_ENCODER, x), requests))
    for inputs, got in zip(requests, results, strict=True):
        errors = _max_errors(got, embedded.run(Stage.MEMORY_ENCODER, inputs))
        assert max(errors.values()) <= TOLERANCE, errors


def test_track_step_with_more_objects_than_max_batch(triton_url: str, embedded: OnnxRuntimeBackend) -> None:  # noqa: F811
    """The ensemble chunked: a client capped at 2 rows sends 3 objects as two requests, with the same results."""
    from medsam2.backends.triton_backend import TritonBackend

    backend = TritonBackend(triton_url, max_batch=2, timeout_s=patience.TRITON_CALL_S)
    inputs = sample_inputs(ENSEMBLES[Stage.TRACK_STEP], batch=3, slots=2, seed=12)
    inputs["no_memory"][:] = 0.0
    inputs["memory"] = from_bfloat16_bits(to_bfloat16_bits(inputs["memory"]))
    errors = _max_errors(backend.run(Stage.TRACK_STEP, inputs), _composed_track_step(embedded, inputs))
    assert max(errors.values()) <= TOLERANCE, errors
    backend.close()


def test_concurrent_sessions_are_batched_in_the_heavy_stages(triton, triton_url: str) -> None:  # noqa: F811
    """Eight sessions tracking at once: Triton's own statistics show batches larger than one in the encoder and
    the memory attention (fewer executions than inferences). Only the statistics are checked, never the speed."""
    from concurrent.futures import ThreadPoolExecutor

    sessions = 8
    # One object per session, memory banks padded to one size (TrackerOptions.memory_slots), as Triton needs to
    # merge requests: the dynamic batcher only merges tensors of equal shapes.
    requests = []
    for i in range(sessions):
        inputs = sample_inputs(ENSEMBLES[Stage.TRACK_STEP], batch=1, seed=40 + i)
        inputs["no_memory"][:] = 0.0
        inputs["memory"] = from_bfloat16_bits(to_bfloat16_bits(inputs["memory"]))
        requests.append(inputs)
    heavy = ("image_encoder", "memory_attention")
    before = {m: model_counts(triton_url, m) for m in heavy}
    with ThreadPoolExecutor(sessions) as pool:
        # Two rounds: whatever the first execution took alone, the requests queued behind it are merged.
        list(pool.map(lambda x: [triton.run(Stage.TRACK_STEP, x) for _ in range(2)], requests))
    for model in heavy:
        inferences, executions = (a - b for a, b in zip(model_counts(triton_url, model), before[model], strict=True))
        assert inferences == 2 * sessions, (model, inferences)
        assert executions < inferences, (model, executions, inferences)
