"""A small Python client for the session service, used by ``medsam2 client`` and the tests.

Every method takes ``timeout`` (seconds for the whole call, None: no deadline) and raises one typed error,
``ServiceError`` (status, reason, field, retry_after_s from the status's ``google.rpc`` details), which is also
a ``grpc.RpcError`` (``code()``, ``details()``) for callers written against grpc.
"""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc
import numpy as np
from google.rpc import error_details_pb2
from grpc_status import rpc_status

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
        postprocessing: pb.PostProcessing | dict[str, object] | None = None,
        timeout: float | None = None,
    ) -> pb.Session:
        """Upload a volume [slices, rows, columns] (or an RGB video [frames, rows, columns, 3]) and open a session.

        ``identity`` may carry study_uid, series_uid, frame_of_reference_uid and sop_instance_uids;
        ``keep_image`` lets ``image`` return the voxels later; ``postprocessing`` sets fields of the
        PostProcessing message (the others take the kind's defaults).
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
            postprocessing=(
                postprocessing
                if isinstance(postprocessing, pb.PostProcessing)
                else pb.PostProcessing(**(postprocessing or {}))  # type: ignore[arg-type]
            ),
            **(identity or {}),  # type: ignore[arg-type]  # study_uid, series_uid, sop_instance_uids
        )
        data = np.ascontiguousarray(voxels, dtype=dtype).tobytes()
        self.bytes_sent += len(data)

        def messages() -> Iterator[pb.CreateSessionRequest]:
            yield pb.CreateSessionRequest(header=header)
            for offset in range(0, len(data), UPLOAD_CHUNK_BYTES):
                yield pb.CreateSessionRequest(voxels=data[offset : offset + UPLOAD_CHUNK_BYTES])

        return self._retried(lambda: _unary(self.stub.CreateSession, messages(), self.metadata, timeout))

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
        timeout: float | None = None,
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
            lambda: _unary(
                self.stub.CreateSession, iter([pb.CreateSessionRequest(header=header)]), self.metadata, timeout
            )
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
        timeout: float | None = None,
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
        return _unary(self.stub.AddPrompt, request, self.metadata, timeout)

    def add_box(
        self,
        session_id: str,
        object_id: int,
        slice_index: int,
        box: tuple[float, float, float, float],
        *,
        timeout: float | None = None,
    ) -> pb.SliceResult:
        """A box prompt."""
        return self.add_prompt(session_id, object_id, slice_index, box=box, timeout=timeout)

    def propagate(self, session_id: str, *, timeout: float | None = None, **fields) -> ResultStream:  # noqa: ANN003
        """Stream per-slice results (fields as in PropagateRequest); ``cancel()`` ends the stream."""
        request = pb.PropagateRequest(session_id=session_id, **fields)
        return ResultStream(self.stub.Propagate(request, metadata=self.metadata, timeout=timeout))

    def slices(
        self,
        session_id: str,
        first: int | None = None,
        last: int | None = None,
        *,
        encoding: int = pb.MASK_ENCODING_UNSPECIFIED,
        timeout: float | None = None,
    ) -> ResultStream:
        """Re-read the stored masks of slices first..last (default: all), e.g. after a lost Propagate stream."""
        request = pb.GetSlicesRequest(
            session_id=session_id,
            first_slice=first,
            last_slice=last,
            encoding=encoding,  # type: ignore[arg-type]
        )
        return ResultStream(self.stub.GetSlices(request, metadata=self.metadata, timeout=timeout))

    def result(
        self,
        session_id: str,
        fmt: int,
        *,
        label_values: int = pb.LABEL_VALUES_UNSPECIFIED,
        timeout: float | None = None,
    ) -> tuple[bytes, pb.ResultChunk]:
        """The whole result file in format ``fmt`` and its first chunk (shape, object ids, label map)."""
        request = pb.GetResultRequest(
            session_id=session_id,
            format=fmt,  # type: ignore[arg-type]  # enum values are ints on the wire
            label_values=label_values,  # type: ignore[arg-type]
        )
        chunks = list(ResultStream(self.stub.GetResult(request, metadata=self.metadata, timeout=timeout)))
        data = b"".join(c.data for c in chunks)
        self.bytes_received += len(data)
        return data, chunks[0]

    def image(self, session_id: str, *, timeout: float | None = None) -> bytes:
        """The study as the session keeps it (opened with ``keep_image``), as gzipped NIfTI."""
        request = pb.GetImageRequest(session_id=session_id)
        chunks = ResultStream(self.stub.GetImage(request, metadata=self.metadata, timeout=timeout))
        data = b"".join(c.data for c in chunks)
        self.bytes_received += len(data)
        return data

    def result_labels(
        self, session_id: str, *, object_id_values: bool = False, timeout: float | None = None
    ) -> tuple[np.ndarray, list[int]]:
        """The label volume and the objects in it (values: ranks, label i+1 is ids[i]; or the object ids)."""
        values = pb.LABEL_VALUES_OBJECT_IDS if object_id_values else pb.LABEL_VALUES_RANKS
        data, first = self.result(session_id, pb.RESULT_FORMAT_RAW_LABELS, label_values=values, timeout=timeout)
        return np.frombuffer(data, "<u2").reshape(tuple(first.shape)).copy(), list(first.object_ids)

    def object_masks(self, session_id: str, *, timeout: float | None = None) -> dict[int, np.ndarray]:
        """Each object's boolean mask [slices, rows, columns] (overlaps kept)."""
        data, first = self.result(session_id, pb.RESULT_FORMAT_OBJECT_MASKS_NPZ, timeout=timeout)
        with np.load(io.BytesIO(data)) as npz:
            return {i: npz[f"object_{i}"] for i in first.object_ids}

    def store_result(
        self, session_id: str, endpoint: str, request_id: str = "", *, timeout: float | None = None
    ) -> pb.StoreResultResponse:
        """Send the session's SEG and SR to a PACS endpoint the server knows."""
        request = pb.StoreResultRequest(
            session_id=session_id, endpoint=endpoint, request_id=request_id or new_request_id()
        )
        return _unary(self.stub.StoreResult, request, self.metadata, timeout)

    def save_annotation(
        self, session_id: str, *, case_name: str = "", request_id: str = "", timeout: float | None = None
    ) -> pb.SaveAnnotationResponse:
        """Save the session's image and masks as a training case in the server's annotation store."""
        request = pb.SaveAnnotationRequest(
            session_id=session_id, case_name=case_name, request_id=request_id or new_request_id()
        )
        return _unary(self.stub.SaveAnnotation, request, self.metadata, timeout)

    def reset_objects(
        self, session_id: str, object_ids: list[int] | None = None, *, timeout: float | None = None
    ) -> pb.Session:
        """Forget some objects, or all of them (None)."""
        request = pb.ResetObjectsRequest(session_id=session_id, object_ids=object_ids or [], all=object_ids is None)
        return _unary(self.stub.ResetObjects, request, self.metadata, timeout)

    def get_session(self, session_id: str, *, timeout: float | None = None) -> pb.Session:
        """Describe a session."""
        return _unary(self.stub.GetSession, pb.GetSessionRequest(session_id=session_id), self.metadata, timeout)

    def list_sessions(self, *, timeout: float | None = None) -> list[pb.Session]:
        """Every open session."""
        return list(_unary(self.stub.ListSessions, pb.ListSessionsRequest(), self.metadata, timeout).sessions)

    def server_info(self, *, timeout: float | None = None) -> pb.ServerInfo:
        """What the server runs and allows."""
        return _unary(self.stub.GetServerInfo, pb.GetServerInfoRequest(), self.metadata, timeout)

    def set_model_version(self, version: int = 0, *, timeout: float | None = None) -> pb.ServerInfo:
        """Admins only: serve model ``version`` (0: the newest) to new sessions."""
        return _unary(self.stub.SetModelVersion, pb.SetModelVersionRequest(version=version), self.metadata, timeout)

    def close_session(self, session_id: str, *, timeout: float | None = None) -> bool:
        """Close a session."""
        request = pb.CloseSessionRequest(session_id=session_id)
        return _unary(self.stub.CloseSession, request, self.metadata, timeout).closed

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()


class ServiceError(grpc.RpcError):
    """A refused or failed call: its status, the ``ErrorInfo`` reason, the ``BadRequest`` field, the retry delay."""

    def __init__(
        self,
        status: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        field: str = "",
        retry_after_s: float | None = None,
        trailing_metadata: tuple = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason or status.name
        """The stable reason (docs/errors.md); the status name when the server sent none (e.g. a dropped link)."""
        self.field = field
        """The request field at fault (INVALID_ARGUMENT), or empty."""
        self.retry_after_s = retry_after_s
        """Seconds to wait before a retry can help, when the server said so; None: a retry will not help as is."""
        self._trailing_metadata = trailing_metadata

    def code(self) -> grpc.StatusCode:
        """The status code (as ``grpc.RpcError.code``)."""
        return self.status

    def details(self) -> str:
        """The message (as ``grpc.RpcError.details``)."""
        return self.message

    def trailing_metadata(self) -> tuple:
        """The call's trailing metadata (holds the binary google.rpc.Status)."""
        return self._trailing_metadata

    def __str__(self) -> str:
        return f"{self.status.name} {self.reason}: {self.message}"

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> ServiceError:
        """The typed error of a grpc failure, with the details its ``google.rpc.Status`` carries."""
        if isinstance(error, ServiceError):
            return error
        code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        message = error.details() if hasattr(error, "details") else str(error)
        reason, field, retry = "", "", None
        status = rpc_status.from_call(error) if hasattr(error, "trailing_metadata") else None
        for detail in status.details if status is not None else ():
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason = info.reason
                field = field or info.metadata.get("field", "")
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                field = (bad.field_violations[0].field if bad.field_violations else "") or field
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                info_retry = error_details_pb2.RetryInfo()
                detail.Unpack(info_retry)
                retry = info_retry.retry_delay.seconds + info_retry.retry_delay.nanos / 1e9
        metadata = tuple(error.trailing_metadata() or ()) if hasattr(error, "trailing_metadata") else ()
        return cls(code, message or "", reason=reason, field=field, retry_after_s=retry, trailing_metadata=metadata)


class ResultStream:
    """A server stream whose failures raise ``ServiceError``; ``cancel()`` ends it early."""

    def __init__(self, call) -> None:  # noqa: ANN001 - a grpc streaming call
        self._call = call

    def __iter__(self) -> ResultStream:
        return self

    def __next__(self):  # noqa: ANN204
        try:
            return next(self._call)
        except grpc.RpcError as exc:
            raise ServiceError.from_rpc_error(exc) from exc

    def cancel(self) -> None:
        """Cancel the call (the server stops within a slice)."""
        self._call.cancel()


def _unary(method, request, metadata: tuple, timeout: float | None):  # noqa: ANN001, ANN202
    """Call a unary (or client-streaming) method; grpc failures become ``ServiceError``."""
    try:
        return method(request, metadata=metadata, timeout=timeout)
    except grpc.RpcError as exc:
        raise ServiceError.from_rpc_error(exc) from exc


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


class RetriedStream(Generic[T]):
    """The messages of the server stream ``start()`` opens; a stream cut by a retryable error is opened again.

    A retried stream starts over, so messages already seen may come again (a Propagate streams every slice).
    ``cancel()`` cancels the call in flight and stops the retries.
    """

    def __init__(
        self, start: Callable[[], Iterator[T]], policy: RetryPolicy, on_retry: RetryCallback | None = None
    ) -> None:
        self._start, self._policy, self._on_retry = start, policy, on_retry
        self._call: Any = None
        self._cancelled = False
        self._messages: Iterator[T] = self._run()

    def _run(self) -> Iterator[T]:
        attempt = 0
        while True:
            try:
                self._call = self._start()
                yield from self._call
                return
            except grpc.RpcError as exc:
                if self._cancelled:
                    raise
                _wait_to_retry(exc, attempt, self._policy, self._on_retry)
                attempt += 1

    def __iter__(self) -> RetriedStream[T]:
        return self

    def __next__(self) -> T:
        return next(self._messages)

    def cancel(self) -> None:
        """Cancel the call in flight; no retry follows."""
        self._cancelled = True
        if self._call is not None:
            self._call.cancel()


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
            return lambda request, **kw: RetriedStream(lambda: method(request, **kw), policy, on_retry)
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
