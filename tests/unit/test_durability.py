"""What a durable session stores and how its journal reads back, without a server or a Redis."""

from __future__ import annotations

import numpy as np

from medsam2.api.pb.medsam2.v1 import segmentation_pb2 as pb
from medsam2.server.durability import Durability, describe
from medsam2.store import SessionRecord
from medsam2.store.memory_store import MemoryStore


def header(shape: tuple[int, int, int]) -> pb.StudyHeader:
    return pb.StudyHeader(shape=list(shape), dtype=pb.DATA_TYPE_INT16, spacing_mm=[1.0, 1.0, 1.0])


def test_an_upload_round_trips_through_the_store_compressed_and_chunked() -> None:
    store = MemoryStore()
    durability = Durability(store, ttl_s=60, max_study_bytes=1 << 30)
    voxels = (np.arange(40 * 64 * 64) % 700 - 300).astype("<i2").reshape(40, 64, 64)
    chunks = durability.pack_study(header(voxels.shape), voxels)
    assert chunks and sum(map(len, chunks)) < voxels.nbytes
    durability.created("s", "alice", header(voxels.shape), chunks, None)
    assert np.array_equal(durability.study_voxels("s", header(voxels.shape)), voxels)
    assert store.load("s") == SessionRecord(
        "s", "alice", header(voxels.shape).SerializeToString(), created=store.load("s").created
    )


def test_a_study_over_the_cap_is_not_durable_and_a_pacs_study_stores_only_its_reference() -> None:
    durability = Durability(MemoryStore(), ttl_s=60, max_study_bytes=100)
    noisy = np.random.default_rng(0).integers(-1000, 1000, (4, 32, 32)).astype("<i2")
    assert durability.pack_study(header(noisy.shape), noisy) is None
    pacs = pb.StudyHeader(pacs=pb.PacsReference(endpoint="pacs", study_uid="1.2.3"))
    assert durability.pack_study(pacs, None) == []


def test_the_journal_reads_back_as_history_and_replays_are_not_journaled_again() -> None:
    store = MemoryStore()
    durability = Durability(store, ttl_s=60, max_study_bytes=1 << 20)
    durability.created("s", "bob", header((2, 4, 4)), [], None)
    box = pb.AddPromptRequest(session_id="s", object_id=2, slice=1, box=pb.Box(x0=0, y0=0, x1=3, y1=3))
    durability.journal("s", "AddPrompt", box)
    durability.journal("s", "Propagate", pb.PropagateRequest(session_id="s", first_slice=0, last_slice=1))
    with durability.rebuilding("s"):
        assert durability.replaying
        durability.journal("s", "AddPrompt", box)
    assert not durability.replaying
    assert durability.history("s") == ["AddPrompt object 2 slice 1 box", "Propagate slices 0..1"]
    assert describe("ResetObjects", pb.ResetObjectsRequest(all=True)) == "ResetObjects all"
