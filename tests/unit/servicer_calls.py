"""A servicer on the FakeBackend, a session store that refuses writes on demand, and calls as the gateway makes them.

Shared by the unit tests of the servicer's bookkeeping (test_servicer_*.py, journal failures, readers): they call
the servicer's RPC methods directly, as the HTTP gateway does, with ``Call`` as the context; ``Call`` keeps the
``google.rpc.Status`` a gRPC client would decode, so the details (ErrorInfo, BadRequest, RetryInfo) are checked as
sent.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from medsam2.api.pb.medsam2.v1 import segmentation_pb2 as pb
from medsam2.engine.tracker import TrackerOptions
from medsam2.gateway.context import STATUS_DETAILS_KEY, HttpCallContext
from medsam2.server.auth import Authenticator
from medsam2.server.durability import Durability
from medsam2.server.servicer import SegmentationServicer
from medsam2.server.sessions import Limits, SessionRegistry
from medsam2.store import JournalEntry, SessionRecord, StoreUnavailable
from medsam2.store.memory_store import MemoryStore
from medsam2.testing.fake_backend import FakeBackend

SLICES, SIDE = 5, 64
TOKENS = {"alice": "token-a", "bob": "token-b", "carol": "token-c"}


class FlakyStore(MemoryStore):
    """A memory store that refuses, on demand, as a lost Redis would.

    The next ``failures`` writes (a new session, a journal append, a kept reply) are refused; so are the next
    ``read_failures`` reads of a stored session (its record, study or journal) for a rebuild.
    """

    url_scheme = "flaky"

    def __init__(self) -> None:
        super().__init__()
        self.failures = 0
        self.read_failures = 0

    def _refuse(self) -> None:
        if self.failures:
            self.failures -= 1
            raise StoreUnavailable("session store unavailable while trying to journal a change: refused by the test")

    def _refuse_read(self) -> None:
        if self.read_failures:
            self.read_failures -= 1
            raise StoreUnavailable("session store unavailable while reading a session: refused by the test")

    def create(self, record: SessionRecord, study_chunks: Iterable[bytes], ttl_s: float) -> None:
        """Store a new session, unless this write is to fail."""
        self._refuse()
        super().create(record, study_chunks, ttl_s)

    def append(self, session_id: str, entry: JournalEntry, ttl_s: float) -> int:
        """Append, unless this write is to fail."""
        self._refuse()
        return super().append(session_id, entry, ttl_s)

    def remember_reply(self, session_id: str, request_id: str, reply: bytes, ttl_s: float) -> None:
        """Keep a reply, unless this write is to fail."""
        self._refuse()
        super().remember_reply(session_id, request_id, reply, ttl_s)

    def load(self, session_id: str) -> SessionRecord | None:
        """A session's record, unless this read is to fail."""
        self._refuse_read()
        return super().load(session_id)

    def journal(self, session_id: str) -> list[JournalEntry]:
        """A session's journal, unless this read is to fail."""
        self._refuse_read()
        return super().journal(session_id)


class Call(HttpCallContext):
    """A call's context as the gateway makes it: a bearer token, and the status it ended with."""

    def __init__(self, principal: str = "alice", *, token: str | None = None) -> None:
        bearer = TOKENS[principal] if token is None else token
        super().__init__((("authorization", f"Bearer {bearer}"),), "ipv4:127.0.0.1:1")

        self.status: status_pb2.Status | None = None
        """The ``google.rpc.Status`` the call ended with, as a gRPC client decodes it from the trailers."""

    def abort_with_status(self, status) -> None:
        for key, value in status.trailing_metadata or ():
            if key == STATUS_DETAILS_KEY:
                self.status = status_pb2.Status.FromString(value)
        super().abort_with_status(status)

    def reason(self) -> str:
        """The ErrorInfo reason of the failed call."""
        details = self.error()[1]["error"].get("details", [])
        return next(d["reason"] for d in details if "reason" in d)

    def detail(self, kind: type[Message]) -> Message | None:
        """The status detail of type ``kind`` (``ErrorInfo``, ``BadRequest``, ``RetryInfo``), None if absent."""
        assert self.status is not None, "the call ended without a google.rpc.Status"
        assert self.status.code == self.code().value[0] and self.status.message == self.details()
        found = [d for d in self.status.details if d.Is(kind.DESCRIPTOR)]
        assert len(found) <= 1, f"{len(found)} {kind.__name__} details"
        if not found:
            return None
        detail = kind()
        found[0].Unpack(detail)
        return detail

    def info(self) -> error_details_pb2.ErrorInfo:
        """The call's ErrorInfo (every error carries one)."""
        info = self.detail(error_details_pb2.ErrorInfo)
        assert isinstance(info, error_details_pb2.ErrorInfo), "no ErrorInfo"
        return info

    def bad_field(self) -> str | None:
        """The field of the BadRequest's only violation; None without a BadRequest."""
        bad = self.detail(error_details_pb2.BadRequest)
        if bad is None:
            return None
        assert isinstance(bad, error_details_pb2.BadRequest) and len(bad.field_violations) == 1
        return bad.field_violations[0].field

    def retry_after_s(self) -> float | None:
        """The RetryInfo delay in seconds; None without a RetryInfo."""
        retry = self.detail(error_details_pb2.RetryInfo)
        if retry is None:
            return None
        assert isinstance(retry, error_details_pb2.RetryInfo)
        return retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9


def make_servicer(
    store: MemoryStore | None,
    tmp_path: Path,
    *,
    limits: Limits | None = None,
    backend: FakeBackend | None = None,
    admins: tuple[str, ...] = (),
    clock: Callable[[], float] = time.monotonic,
    **options: object,
) -> SegmentationServicer:
    """A servicer on the FakeBackend whose principals are alice and bob (``Call``'s tokens) and carol.

    Durable on ``store`` (None: sessions live in memory only); ``admins`` are principals allowed admin calls;
    ``clock`` is the registry's (idle and TTL clocks).
    """
    tokens = tmp_path / "tokens"
    tokens.write_text("".join(f"{p}:{t}\n" for p, t in TOKENS.items()))
    return SegmentationServicer(
        SessionRegistry(limits or Limits(lock_wait_s=5.0), clock),
        backend or FakeBackend(),
        TrackerOptions(),
        auth=Authenticator(tokens_file=tokens, admins=admins),
        durability=None if store is None else Durability(store, ttl_s=600, max_study_bytes=1 << 30),
        **options,  # type: ignore[arg-type]
    )


def volume(seed: int = 0) -> np.ndarray:
    """A random uint8 study of SLICES x SIDE x SIDE."""
    return (np.random.default_rng(seed).random((SLICES, SIDE, SIDE)) * 255).astype(np.uint8)


def create(
    servicer: SegmentationServicer,
    voxels: np.ndarray,
    request_id: str,
    call: Call,
    *,
    keep_image: bool = False,
    **fields: object,
) -> pb.Session | None:
    """CreateSession with an upload of ``voxels`` (``fields``: more of the header); None when refused."""
    header = pb.StudyHeader(
        keep_image=keep_image,
        shape=list(voxels.shape),
        dtype=pb.DATA_TYPE_UINT8,
        spacing_mm=[1.0, 1.0, 1.0],
        preprocessing=pb.Preprocessing(preset="none"),
        request_id=request_id,
        **fields,  # type: ignore[arg-type]
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


def call_stream(method, request, call: Call) -> list | None:
    """A server stream's messages read to its end; None when it failed (``call`` holds the status)."""
    try:
        return list(method(request, call))
    except Exception:
        assert call.failed()
        return None


def box_prompt(session_id: str, object_id: int = 1, slice_: int = 2, **fields: object) -> pb.AddPromptRequest:
    """A box on ``slice_`` well inside a SIDE x SIDE slice."""
    return pb.AddPromptRequest(
        session_id=session_id,
        object_id=object_id,
        slice=slice_,
        box=pb.Box(x0=8, y0=8, x1=40, y1=40),
        **fields,  # type: ignore[arg-type]
    )
