"""Readers share a session: downloads of results and of the image run beside each other, each in bounded memory."""

from __future__ import annotations

import gzip
import threading
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from servicer_calls import Call, FlakyStore, call_unary, create, make_servicer, propagate, volume

from medsam2.api.pb.medsam2.v1 import segmentation_pb2 as pb
from medsam2.server.servicer import SegmentationServicer


@pytest.fixture()
def servicer(tmp_path: Path) -> SegmentationServicer:
    return make_servicer(FlakyStore(), tmp_path, max_message_bytes=8 << 20)


def at_once(count: int, work: Callable[[], bytes]) -> list[bytes | str]:
    """Run ``work`` in ``count`` threads started together; each answer, or the error it ended with."""
    start = threading.Barrier(count)
    answers: list[bytes | str] = []

    def run() -> None:
        start.wait()
        try:
            answers.append(work())
        except Exception as exc:  # the test shows it
            answers.append(f"{type(exc).__name__}: {exc}")

    callers = [threading.Thread(target=run) for _ in range(count)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(120)
    return answers


def test_ten_concurrent_get_result_calls_on_one_session_all_succeed(servicer: SegmentationServicer) -> None:
    sid = create(servicer, volume(6), "open-4", Call()).session_id
    box = pb.AddPromptRequest(session_id=sid, object_id=1, slice=2, box=pb.Box(x0=8, y0=8, x1=40, y1=40))
    call_unary(servicer.AddPrompt, box, Call())
    propagate(servicer, sid, Call())

    def download() -> bytes:
        call = Call()
        try:
            chunks = list(servicer.GetResult(pb.GetResultRequest(session_id=sid, format=pb.RESULT_FORMAT_NPZ), call))
        except Exception:
            return f"{call.code()}: {call.details()}"  # type: ignore[return-value]
        return b"".join(c.data for c in chunks)

    # Another download is still reading the session meanwhile: readers share it (an exclusive lock would make
    # every one of the ten wait lock_wait_s and end ABORTED).
    with servicer.registry.read(sid, principal="alice"):
        answers = at_once(10, download)
    assert len(answers) == 10 and all(isinstance(a, bytes) for a in answers), answers
    assert len(set(answers)) == 1 and len(answers[0]) > 0


def test_ten_concurrent_get_image_calls_stream_the_kept_image_without_a_copy_each(
    servicer: SegmentationServicer,
) -> None:
    rng = np.random.default_rng(7)
    image = (rng.integers(0, 40, (32, 256, 256)) * 3).astype(np.uint8)  # 2 MiB, compressible as a CT is
    sid = create(servicer, image, "open-image", Call(), keep_image=True).session_id
    request = pb.GetImageRequest(session_id=sid, chunk_bytes=64 << 10)

    def download() -> bytes:
        call = Call()
        chunks = list(servicer.GetImage(request, call))
        assert all(len(c.data) <= 64 << 10 for c in chunks)
        assert {c.total_bytes for c in chunks} == {sum(len(c.data) for c in chunks)}
        return b"".join(c.data for c in chunks)

    first = download()  # counts the file's size once
    tracemalloc.start()
    try:
        answers = at_once(10, download)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert all(a == first for a in answers), [a for a in answers if isinstance(a, str)]
    # Each call holds a chunk and the compressor's state, not the file or the image (2 MiB each, 20 MiB for ten);
    # the answers themselves (the ten files, kept by this test) are the rest. A call's own state is about 0.5 MiB
    # (zlib's 256 KiB, a slab and its bytes, the chunk being filled), and all ten may hold theirs at once.
    held = sum(len(a) for a in answers)
    assert peak - held < 8 * 2**20, f"{(peak - held) / 2**20:.1f} MiB beyond the answers for 10 concurrent calls"
    nifti = gzip.decompress(first)
    assert nifti[352:] == np.ascontiguousarray(image).tobytes()  # x fastest: the [z, y, x] study as it is


def test_chunks_are_bounded_by_the_message_size(servicer: SegmentationServicer) -> None:
    image = volume(9)
    sid = create(servicer, image, "open-big-chunks", Call(), keep_image=True).session_id
    chunks = list(servicer.GetImage(pb.GetImageRequest(session_id=sid, chunk_bytes=2**31), Call()))
    assert max(len(c.data) for c in chunks) <= 8 << 20
    call_unary(
        servicer.AddPrompt,
        pb.AddPromptRequest(session_id=sid, object_id=1, slice=1, box=pb.Box(x0=4, y0=4, x1=30, y1=30)),
        Call(),
    )
    propagate(servicer, sid, Call())
    request = pb.GetResultRequest(session_id=sid, format=pb.RESULT_FORMAT_RAW_LABELS, chunk_bytes=2**31)
    result = list(servicer.GetResult(request, Call()))
    assert result and max(len(c.data) for c in result) <= 8 << 20
