"""A small Python client for the session service, used by ``medsam2 client`` and the tests."""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import numpy as np

from medsam2.api.convert import DTYPE_OF, decode_mask, encode_mask
from medsam2.api.pb.medsam2.v1 import segmentation_pb2 as pb
from medsam2.api.pb.medsam2.v1 import segmentation_pb2_grpc as pb_grpc

UPLOAD_CHUNK_BYTES = 2 << 20
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How calls that end UNAVAILABLE are retried: a draining or restarting server, a replica that went away.

    Every call of this client may be retried: reads and closes are idempotent, changes carry a request id the
    server answers once, and a Propagate cut short was never journaled, so it runs again from the start
    (on another replica, after a rebuild, when the session store is shared).
    """

    attempts: int = 5
    """Calls at most, the first included."""
    first_delay_s: float = 0.5
    """Backoff before the second call; doubled for each further one."""
    max_delay_s: float = 10.0
    """Longest wait between two calls, whatever the server's RetryInfo asks."""


RetryCallback = Callable[[grpc.RpcError, int, float], None]
"""Told (error, attempt that failed, seconds until the next) before each retry, e.g. to say so on stderr."""


@dataclass
class Client:
    """A connection to one server."""

    target: str
    token: str = ""
    max_message_bytes: int = 64 * 2**20
    root_certificates: bytes | None = None
    routing_key: str = ""
    """Sent as x-medsam2-session on every call, so a consistent-hash router keeps a study on one replica."""
    bytes_sent: int = 0
    """Voxel bytes uploaded so far (for round-trip accounting)."""
    bytes_received: int = 0
    """Result bytes downloaded so far."""
    retry: RetryPolicy | None = None
    """Retry calls that end UNAVAILABLE (None: each call is tried once, and its error raised)."""
    on_retry: RetryCallback | None = None

    def __post_init__(self) -> None:
        options = [
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
        ]
        if self.root_certificates is not None:
            creds = grpc.ssl_channel_credentials(root_certificates=self.root_certificates)
            self.channel = grpc.secure_channel(self.target, creds, options=options)
        else:
            self.channel = grpc.insecure_channel(self.target, options=options)
        self.stub = pb_grpc.SegmentationServiceStub(self.channel)
        if self.retry is not None:
            self.stub = _RetryingStub(self.stub, self.retry, self.on_retry)  # type: ignore[assignment]
        metadata = [("authorization", f"Bearer {self.token}")] if self.token else []
        if self.routing_key:
            metadata.append(("x-medsam2-session", self.routing_key))
        self.metadata = tuple(metadata)

    def create_session(
        self,
        voxels: np.ndarray,
        spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
        preset: str = "",
        window: tuple[float, float] | None = None,
        video: bool = False,
        label: str = "",
        *,
        modality: str = "",
        geometry: pb.PatientGeometry | None = None,
        identity: dict[str, object] | None = None,
        external_id: str = "",
        request_id: str = "",
        keep_image: bool = False,
    ) -> pb.Session:
        """Upload a volume [slices, rows, columns] in chunks and open a session on it.

        ``identity`` may carry study_uid, series_uid, frame_of_reference_uid and sop_instance_uids;
        ``keep_image`` lets ``image`` return the voxels later.
        """
        dtype = np.dtype(voxels.dtype).newbyteorder("<")
        if dtype not in DTYPE_OF:
            voxels = voxels.astype(np.float32)
            dtype = np.dtype("<f4")
        header = pb.StudyHeader(
            shape=list(voxels.shape),
            dtype=DTYPE_OF[dtype],  # type: ignore[arg-type]  # enum values are ints on the wire
            spacing_mm=list(spacing),
            preprocessing=_preprocessing(preset, window),
            kind=pb.STUDY_KIND_VIDEO if video else pb.STUDY_KIND_VOLUME,
            label=label,
            modality=modality,
            geometry=geometry,
            external_id=external_id,
            request_id=request_id or new_request_id(),
            keep_image=keep_image,
            **(identity or {}),  # type: ignore[arg-type]  # study_uid, series_uid, sop_instance_uids
        )
        data = np.ascontiguousarray(voxels, dtype=dtype).tobytes()
        self.bytes_sent += len(data)

        def messages() -> Iterator[pb.CreateSessionRequest]:
            yield pb.CreateSessionRequest(header=header)
            for offset in range(0, len(data), UPLOAD_CHUNK_BYTES):
                yield pb.CreateSessionRequest(voxels=data[offset : offset + UPLOAD_CHUNK_BYTES])

        return self._retried(lambda: self.stub.CreateSession(messages(), metadata=self.metadata))

    def _retried(self, call: Callable[[], T]) -> T:
        """A client-streaming call, started again with fresh request messages on each retry."""
        return call() if self.retry is None else with_retries(call, self.retry, self.on_retry)

    def open_pacs(
        self,
        endpoint: str,
        study_uid: str,
        series_uid: str = "",
        *,
        preset: str = "",
        window: tuple[float, float] | None = None,
        modality: str = "",
        label: str = "",
        external_id: str = "",
        request_id: str = "",
        keep_image: bool = False,
    ) -> pb.Session:
        """Open a session on a study the server fetches from one of its PACS endpoints."""
        header = pb.StudyHeader(
            pacs=pb.PacsReference(endpoint=endpoint, study_uid=study_uid, series_uid=series_uid),
            preprocessing=_preprocessing(preset, window),
            kind=pb.STUDY_KIND_VOLUME,
            label=label,
            modality=modality,
            external_id=external_id,
            request_id=request_id or new_request_id(),
            keep_image=keep_image,
        )
        return self._retried(
            lambda: self.stub.CreateSession(iter([pb.CreateSessionRequest(header=header)]), metadata=self.metadata)
        )

    def add_prompt(
        self,
        session_id: str,
        object_id: int,
        slice_index: int,
        *,
        box: tuple[float, float, float, float] | None = None,
        points: list[tuple[float, float, bool]] | None = None,
        mask: np.ndarray | None = None,
        keep_previous_points: bool = False,
        correction: bool = False,
        object_info: pb.ObjectInfo | None = None,
        encoding: int = pb.MASK_ENCODING_UNSPECIFIED,
        request_id: str = "",
    ) -> pb.SliceResult:
        """A box, clicks (x, y, positive) or a mask for one object on one slice; returns that slice's masks."""
        request = pb.AddPromptRequest(
            session_id=session_id,
            object_id=object_id,
            slice=slice_index,
            points=[pb.Point(x=x, y=y, positive=positive) for x, y, positive in points or []],
            keep_previous_points=keep_previous_points,
            correction=correction,
            object_info=object_info,
            encoding=encoding,  # type: ignore[arg-type]
            request_id=request_id or new_request_id(),
        )
        if box is not None:
            request.box.CopyFrom(pb.Box(x0=box[0], y0=box[1], x1=box[2], y1=box[3]))
        if mask is not None:
            request.mask.CopyFrom(encode_mask(np.asarray(mask, bool), pb.MASK_ENCODING_RLE))
        return self.stub.AddPrompt(request, metadata=self.metadata)

    def add_box(
        self, session_id: str, object_id: int, slice_index: int, box: tuple[float, float, float, float]
    ) -> pb.SliceResult:
        """A box prompt."""
        return self.add_prompt(session_id, object_id, slice_index, box=box)

    def propagate(self, session_id: str, **fields) -> Iterator[pb.SliceResult]:  # noqa: ANN003
        """Stream per-slice results (fields as in PropagateRequest)."""
        return self.stub.Propagate(pb.PropagateRequest(session_id=session_id, **fields), metadata=self.metadata)

    def result(self, session_id: str, fmt: int) -> tuple[bytes, pb.ResultChunk]:
        """The whole result file in format ``fmt`` and its first chunk (shape, object ids)."""
        request = pb.GetResultRequest(session_id=session_id, format=fmt)  # type: ignore[arg-type]
        chunks = list(self.stub.GetResult(request, metadata=self.metadata))
        data = b"".join(c.data for c in chunks)
        self.bytes_received += len(data)
        return data, chunks[0]

    def image(self, session_id: str) -> bytes:
        """The study as the session keeps it (opened with ``keep_image``), as gzipped NIfTI."""
        chunks = self.stub.GetImage(pb.GetImageRequest(session_id=session_id), metadata=self.metadata)
        data = b"".join(c.data for c in chunks)
        self.bytes_received += len(data)
        return data

    def result_labels(self, session_id: str) -> tuple[np.ndarray, list[int]]:
        """The label volume and the object id of each label."""
        data, first = self.result(session_id, pb.RESULT_FORMAT_RAW_LABELS)
        return np.frombuffer(data, "<u2").reshape(tuple(first.shape)).copy(), list(first.object_ids)

    def object_masks(self, session_id: str) -> dict[int, np.ndarray]:
        """Each object's boolean mask [slices, rows, columns] (overlaps kept)."""
        data, first = self.result(session_id, pb.RESULT_FORMAT_OBJECT_MASKS_NPZ)
        with np.load(io.BytesIO(data)) as npz:
            return {i: npz[f"object_{i}"] for i in first.object_ids}

    def store_result(self, session_id: str, endpoint: str, request_id: str = "") -> pb.StoreResultResponse:
        """Send the session's SEG and SR to a PACS endpoint the server knows."""
        request = pb.StoreResultRequest(
            session_id=session_id, endpoint=endpoint, request_id=request_id or new_request_id()
        )
        return self.stub.StoreResult(request, metadata=self.metadata)

    def save_annotation(
        self, session_id: str, *, case_name: str = "", request_id: str = ""
    ) -> pb.SaveAnnotationResponse:
        """Save the session's image and masks as a training case in the server's annotation store."""
        request = pb.SaveAnnotationRequest(
            session_id=session_id, case_name=case_name, request_id=request_id or new_request_id()
        )
        return self.stub.SaveAnnotation(request, metadata=self.metadata)

    def reset_objects(self, session_id: str, object_ids: list[int] | None = None) -> pb.Session:
        """Forget some objects, or all of them (None)."""
        request = pb.ResetObjectsRequest(session_id=session_id, object_ids=object_ids or [], all=object_ids is None)
        return self.stub.ResetObjects(request, metadata=self.metadata)

    def get_session(self, session_id: str) -> pb.Session:
        """Describe a session."""
        return self.stub.GetSession(pb.GetSessionRequest(session_id=session_id), metadata=self.metadata)

    def list_sessions(self) -> list[pb.Session]:
        """Every open session."""
        return list(self.stub.ListSessions(pb.ListSessionsRequest(), metadata=self.metadata).sessions)

    def server_info(self) -> pb.ServerInfo:
        """What the server runs and allows."""
        return self.stub.GetServerInfo(pb.GetServerInfoRequest(), metadata=self.metadata)

    def set_model_version(self, version: int = 0) -> pb.ServerInfo:
        """Admins only: serve model ``version`` (0: the newest) to new sessions."""
        return self.stub.SetModelVersion(pb.SetModelVersionRequest(version=version), metadata=self.metadata)

    def close_session(self, session_id: str) -> bool:
        """Close a session."""
        return self.stub.CloseSession(pb.CloseSessionRequest(session_id=session_id), metadata=self.metadata).closed

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()


def retry_delay(error: grpc.RpcError, attempt: int, policy: RetryPolicy) -> float | None:
    """Seconds to wait before retrying after call ``attempt`` (0-based) failed with ``error``; None: do not retry.

    Only UNAVAILABLE is retried. The wait is the exponential backoff, or the server's RetryInfo when it asks
    for longer, and never more than ``policy.max_delay_s``.
    """
    if attempt + 1 >= policy.attempts or not hasattr(error, "code") or error.code() != grpc.StatusCode.UNAVAILABLE:
        return None
    backoff = policy.first_delay_s * 2**attempt
    return min(max(backoff, _retry_info_s(error) or 0.0), policy.max_delay_s)


def with_retries(call: Callable[[], T], policy: RetryPolicy, on_retry: RetryCallback | None = None) -> T:
    """``call()``, again while it fails with a retryable error (``retry_delay``)."""
    attempt = 0
    while True:
        try:
            return call()
        except grpc.RpcError as exc:
            _wait_to_retry(exc, attempt, policy, on_retry)
            attempt += 1


def stream_with_retries(
    start: Callable[[], Iterator[T]], policy: RetryPolicy, on_retry: RetryCallback | None = None
) -> Iterator[T]:
    """The messages of the stream ``start()`` opens; a stream cut by a retryable error is opened again.

    A retried stream starts over, so messages already seen may come again (a Propagate streams every slice).
    """
    attempt = 0
    while True:
        try:
            yield from start()
            return
        except grpc.RpcError as exc:
            _wait_to_retry(exc, attempt, policy, on_retry)
            attempt += 1


def _wait_to_retry(error: grpc.RpcError, attempt: int, policy: RetryPolicy, on_retry: RetryCallback | None) -> None:
    """Sleep until the next attempt, or raise ``error`` when it is not to be retried."""
    delay = retry_delay(error, attempt, policy)
    if delay is None:
        raise error
    if on_retry is not None:
        on_retry(error, attempt, delay)
    time.sleep(delay)


class _RetryingStub:
    """The generated stub with every unary and server-streaming method retried (client-streaming ones as they are)."""

    def __init__(
        self, stub: pb_grpc.SegmentationServiceStub, policy: RetryPolicy, on_retry: RetryCallback | None
    ) -> None:
        self._stub = stub
        self._policy = policy
        self._on_retry = on_retry
        self._methods = pb.DESCRIPTOR.services_by_name["SegmentationService"].methods_by_name

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._stub, name)
        described = self._methods.get(name)
        if described is None or described.client_streaming:
            return method
        policy, on_retry = self._policy, self._on_retry
        if described.server_streaming:
            return lambda request, **kw: stream_with_retries(lambda: method(request, **kw), policy, on_retry)
        return lambda request, **kw: with_retries(lambda: method(request, **kw), policy, on_retry)


def _retry_info_s(error: grpc.RpcError) -> float | None:
    """The delay the server's RetryInfo asks for, if the error carries one."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except (ValueError, AttributeError):
        return None
    for detail in status.details if status is not None else ():
        info = error_details_pb2.RetryInfo()
        if detail.Is(info.DESCRIPTOR) and detail.Unpack(info):
            return info.retry_delay.ToTimedelta().total_seconds()
    return None


def slice_masks(result: pb.SliceResult) -> dict[int, np.ndarray]:
    """Boolean mask per object of a streamed slice result."""
    return {o.object_id: decode_mask(o.mask) for o in result.objects}


def new_request_id() -> str:
    """A fresh request id; reuse one only to retry the same request."""
    return uuid.uuid4().hex


def _preprocessing(preset: str, window: tuple[float, float] | None) -> pb.Preprocessing:
    return pb.Preprocessing(
        preset=preset, window_width=window[0] if window else 0, window_level=window[1] if window else 0
    )
