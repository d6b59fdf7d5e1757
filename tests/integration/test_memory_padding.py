"""Padding memory banks to a fixed capacity (``TrackerOptions.memory_slots``) changes no number."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medsam2.backends.onnxruntime_backend import OnnxRuntimeBackend
from medsam2.engine.memory_bank import batch_memory, empty_memory
from medsam2.engine.prompts import Box
from medsam2.engine.tracker import Direction, Tracker, TrackerOptions
from medsam2.errors import InvalidInput
from medsam2.graphs import MAX_MEMORY_SLOTS


def _logits(backend: OnnxRuntimeBackend, frames: np.ndarray, slots: int) -> np.ndarray:
    tracker = Tracker(backend, frames, TrackerOptions(fill_hole_area=0, memory_slots=slots))
    tracker.add_prompt(1, 0, box=Box(20, 20, 44, 44))
    tracker.add_prompt(2, 0, box=Box(8, 30, 30, 56))
    return np.stack([r.low_res for r in tracker.propagate(Direction.FORWARD, start=0)])


@pytest.mark.slow
def test_padded_banks_track_exactly_as_unpadded(graphs: dict[str, Path]) -> None:
    rng = np.random.default_rng(4)
    frames = rng.integers(0, 256, (4, 64, 64), dtype=np.uint8)
    backend = OnnxRuntimeBackend(graphs["present"], 2)
    plain, padded = _logits(backend, frames, 0), _logits(backend, frames, MAX_MEMORY_SLOTS)
    assert plain.shape == padded.shape == (4, 2, 128, 128)
    assert float(np.max(np.abs(plain - padded))) <= 1e-5


def test_padding_makes_every_bank_one_shape() -> None:
    inputs = batch_memory([empty_memory()], [True], min_slots=MAX_MEMORY_SLOTS)
    assert inputs["memory"].shape[1] == MAX_MEMORY_SLOTS
    assert inputs["memory_valid"].sum() == 0  # the padding is masked out


def test_capacity_beyond_the_graphs_is_refused() -> None:
    frames = np.zeros((2, 16, 16), np.uint8)
    with pytest.raises(InvalidInput, match=f"memory_slots must be between 0 and {MAX_MEMORY_SLOTS}, got 11"):
        Tracker(object(), frames, TrackerOptions(memory_slots=MAX_MEMORY_SLOTS + 1))  # type: ignore[arg-type]


def test_the_service_pads_when_told_and_refuses_an_impossible_setting(graphs: dict[str, Path]) -> None:
    from medsam2.api.client import Client
    from medsam2.errors import ConfigError
    from medsam2.server.app import start_server
    from medsam2.server.config import ServerSettings

    rng = np.random.default_rng(5)
    frames = rng.integers(0, 256, (3, 64, 64), dtype=np.uint8)
    masks = []
    for slots in (0, MAX_MEMORY_SLOTS):
        settings = ServerSettings(port=0, metrics_port=0, model_repository=graphs["present"], memory_slots=slots)
        running = start_server(settings, OnnxRuntimeBackend(graphs["present"], 1))
        try:
            client = Client(f"127.0.0.1:{running.port}")
            session = client.create_session(frames, preset="none")
            (entry,) = running.registry.list(principal="anonymous")
            assert entry.tracker.options.memory_slots == slots
            client.add_box(session.session_id, 1, 0, (20, 20, 44, 44))
            list(client.propagate(session.session_id))
            masks.append(client.object_masks(session.session_id)[1])
            client.close()
        finally:
            running.stop(0)
    np.testing.assert_array_equal(masks[0], masks[1])
    with pytest.raises(ConfigError, match="--memory-slots must be between 0 and"):
        start_server(
            ServerSettings(port=0, metrics_port=0, model_repository=graphs["present"], memory_slots=99),
            OnnxRuntimeBackend(graphs["present"], 1),
        )
