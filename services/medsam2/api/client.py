"""A small Python client for the session service, used by ``medsam2 client`` and the tests."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import numpy as np

from medsam2.api.convert import DTYPE_OF, decode_mask
from medsam2.api.pb.medsam2.v1 import segmentation_pb2 as pb
from medsam2.api.pb.medsam2.v1 import segmentation_pb2_grpc as pb_grpc

UPLOAD_CHUNK_BYTES = 2 << 20


@dataclass
class Client:
    """A connection to one server."""

    target: str
    token: str = ""
    max_message_bytes: int = 64 * 2**20
    root_certificates: bytes | None = None
    routing_key: str = ""
    """Sent as x-medsam2-session on every call, so a consistent-hash router keeps a study on one replica."""

    def __post_init__(self) -> None:
        options = [("grpc.max_receive_message_length", self.max_message_bytes),
                   ("grpc.max_send_message_length", self.max_message_bytes)]
        if self.root_certificates is not None:
            creds = grpc.ssl_channel_credentials(root_certificates=self.root_certificates)
            self.channel = grpc.secure_channel(self.target, creds, options=options)
        else:
            self.channel = grpc.insecure_channel(self.target, options=options)
        self.stub = pb_grpc.SegmentationServiceStub(self.channel)
        metadata = [("authorization", f"Bearer {self.token}")] if self.token else []
        if self.routing_key:
            metadata.append(("x-medsam2-session", self.routing_key))
        self.metadata = tuple(metadata)

    def create_session(self, voxels: np.ndarray, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
                       preset: str = "", window: tuple[float, float] | None = None, video: bool = False,
                       label: str = "") -> pb.Session:
        """Upload a volume [slices, rows, columns] in chunks and open a session on it."""
        dtype = np.dtype(voxels.dtype).newbyteorder("<")
        if dtype not in DTYPE_OF:
            voxels = voxels.astype(np.float32)
            dtype = np.dtype("<f4")
        header = pb.StudyHeader(
            shape=list(voxels.shape), dtype=DTYPE_OF[dtype], spacing_mm=list(spacing),
            preprocessing=pb.Preprocessing(preset=preset, window_width=window[0] if window else 0,
                                           window_level=window[1] if window else 0),
            kind=pb.STUDY_KIND_VIDEO if video else pb.STUDY_KIND_VOLUME, label=label,
        )
        data = np.ascontiguousarray(voxels, dtype=dtype).tobytes()

        def messages() -> Iterator[pb.CreateSessionRequest]:
            yield pb.CreateSessionRequest(header=header)
            for offset in range(0, len(data), UPLOAD_CHUNK_BYTES):
                yield pb.CreateSessionRequest(voxels=data[offset: offset + UPLOAD_CHUNK_BYTES])

        return self.stub.CreateSession(messages(), metadata=self.metadata)

    def add_box(self, session_id: str, object_id: int, slice_index: int,
                box: tuple[float, float, float, float]) -> pb.SliceResult:
        """A box prompt."""
        request = pb.AddPromptRequest(session_id=session_id, object_id=object_id, slice=slice_index,
                                      box=pb.Box(x0=box[0], y0=box[1], x1=box[2], y1=box[3]))
        return self.stub.AddPrompt(request, metadata=self.metadata)

    def propagate(self, session_id: str, **fields) -> Iterator[pb.SliceResult]:  # noqa: ANN003
        """Stream per-slice results (fields as in PropagateRequest)."""
        return self.stub.Propagate(pb.PropagateRequest(session_id=session_id, **fields), metadata=self.metadata)

    def result_labels(self, session_id: str) -> tuple[np.ndarray, list[int]]:
        """The label volume and the object id of each label."""
        chunks = list(self.stub.GetResult(pb.GetResultRequest(session_id=session_id,
                                                              format=pb.RESULT_FORMAT_RAW_LABELS),
                                          metadata=self.metadata))
        data = b"".join(c.data for c in chunks)
        shape = tuple(chunks[0].shape)
        return np.frombuffer(data, "<u2").reshape(shape).copy(), list(chunks[0].object_ids)

    def close_session(self, session_id: str) -> bool:
        """Close a session."""
        return self.stub.CloseSession(pb.CloseSessionRequest(session_id=session_id), metadata=self.metadata).closed

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()


def slice_masks(result: pb.SliceResult) -> dict[int, np.ndarray]:
    """Boolean mask per object of a streamed slice result."""
    return {o.object_id: decode_mask(o.mask) for o in result.objects}
