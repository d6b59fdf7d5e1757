"""A servicer on the FakeBackend, a session store that refuses writes on demand, and calls as the gateway makes them.

Shared by the unit tests of the servicer's bookkeeping (journal failures, request ids, readers).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from medsam2.api.pb.medsam2.v1 import segmentation_pb2 as pb
from medsam2.engine.tracker import TrackerOptions
from medsam2.gateway.context import HttpCallContext
from medsam2.server.auth import Authenticator
from medsam2.server.durability import Durability
from medsam2.server.servicer import SegmentationServicer
from medsam2.server.sessions import Limits, SessionRegistry
from medsam2.store import JournalEntry, StoreUnavailable
from medsam2.store.memory_store import MemoryStore
from medsam2.testing.fake_backend import FakeBackend

SLICES, SIDE = 5, 64
TOKENS = {"alice": "token-a", "bob": "token-b"}


class FlakyStore(MemoryStore):
    """A memory store whose next ``failures`` writes (journal appends, replies) are refused, as a lost Redis would."""

    url_scheme = "flaky"

    def __init__(self) -> None:
        super().__init__()
        self.failures = 0

    def _refuse(self) -> None:
        if self.failures:
            self.failures -= 1
            raise StoreUnavailable("session store unavailable while trying to journal a change: refused by the test")

    def append(self, session_id: str, entry: JournalEntry, ttl_s: float) -> int:
        """Append, unless this write is to fail."""
        self._refuse()
        return super().append(session_id, entry, ttl_s)


class Call(HttpCallContext):
    """A call's context as the gateway makes it: a bearer token, and the status it ended with."""

    def __init__(self, principal: str = "alice") -> None:
        super().__init__((("authorization", f"Bearer {TOKENS[principal]}"),), "ipv4:127.0.0.1:1")

    def reason(self) -> str:
        """The ErrorInfo reason of the failed call."""
        details = self.error()[1]["error"].get("details", [])
        return next(d["reason"] for d in details if "reason" in d)


def make_servicer(store: FlakyStore, tmp_path: Path, **options: object) -> SegmentationServicer:
    """A durable servicer on ``store`` whose principals are alice and bob (``Call``'s tokens)."""
    tokens = tmp_path / "tokens"
    tokens.write_text("".join(f"{p}:{t}\n" for p, t in TOKENS.items()))
    return SegmentationServicer(
        SessionRegistry(Limits(lock_wait_s=5.0)),
        FakeBackend(),
        TrackerOptions(),
        auth=Authenticator(tokens_file=tokens),
        durability=Durability(store, ttl_s=600, max_study_bytes=1 << 30),
        **options,  # type: ignore[arg-type]
    )


def volume(seed: int = 0) -> np.ndarray:
    """A random uint8 study of SLICES x SIDE x SIDE."""
    return (np.random.default_rng(seed).random((SLICES, SIDE, SIDE)) * 255).astype(np.uint8)


def create(
    servicer: SegmentationServicer, voxels: np.ndarray, request_id: str, call: Call, *, keep_image: bool = False
) -> pb.Session | None:
    """CreateSession with an upload of ``voxels``; None when refused (``call`` holds the status)."""
    header = pb.StudyHeader(
        keep_image=keep_image,
        shape=list(voxels.shape),
        dtype=pb.DATA_TYPE_UINT8,
        spacing_mm=[1.0, 1.0, 1.0],
        preprocessing=pb.Preprocessing(preset="none"),
        request_id=request_id,
    )

    def messages() -> Iterator[pb.CreateSessionRequest]:
        yield pb.CreateSessionRequest(header=header)
        yield pb.CreateSessionRequest(voxels=voxels.tobytes())

    try:
        return servicer.CreateSession(messages(), call)
    except Exception:
        assert call.failed(), "an error left the servicer without a status"
        return None


def call_unary(method, request, call: Call):
    """A unary call's reply; None when refused (``call`` holds the status)."""
    try:
        return method(request, call)
    except Exception:
        assert call.failed()
        return None


def propagate(servicer: SegmentationServicer, session_id: str, call: Call) -> list[pb.SliceResult]:
    """Every slice streamed until the stream ended (``call`` holds the status of one that failed)."""
    out: list[pb.SliceResult] = []
    try:
        for result in servicer.Propagate(pb.PropagateRequest(session_id=session_id), call):
            out.append(result)
    except Exception:
        assert call.failed()
    return out
