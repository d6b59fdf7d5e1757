"""The SegmentationService: each RPC converts, calls the engine under the session's lock, converts back."""

from __future__ import annotations

import gzip
import io
import logging
import time
from collections.abc import Callable, Iterator

import numpy as np

from medsam2.api.convert import (
    DIRECTIONS,
    encode_mask,
    header_spacing,
    prompt_from_pb,
)
from medsam2.api.pb.medsam2.v1 import segmentation_pb2 as pb
from medsam2.api.pb.medsam2.v1 import segmentation_pb2_grpc as pb_grpc
from medsam2.engine.backend import StageBackend
from medsam2.engine.protocols import ObjectPrompt, apply_prompt, iter_volume, volume_protocol_length
from medsam2.engine.tracker import Direction, FrameResult, Tracker, TrackerOptions
from medsam2.errors import InvalidInput, NotFound, PreconditionFailed
from medsam2.imaging.windowing import Window, to_uint8
from medsam2.server import metrics
from medsam2.server.auth import Authenticator
from medsam2.server.request_checks import check_prompt_mask
from medsam2.server.sessions import SessionEntry, SessionRegistry, StudyInfo
from medsam2.server.status import rpc
from medsam2.server.uploads import UploadGuard, UploadLimits

log = logging.getLogger(__name__)

DEFAULT_CHUNK_BYTES = 1 << 20
StudyFetcher = Callable[[pb.PacsReference], tuple[np.ndarray, tuple[float, float, float]]]


class SegmentationServicer(pb_grpc.SegmentationServiceServicer):
    """Thin RPC layer over the session registry and the tracking engine."""

    def __init__(self, registry: SessionRegistry, backend: StageBackend, tracker_options: TrackerOptions,
                 fetch_study: StudyFetcher | None = None, *, auth: Authenticator | None = None,
                 uploads: UploadGuard | None = None) -> None:
        self.registry = registry
        self.backend = backend
        self.tracker_options = tracker_options
        self.fetch_study = fetch_study
        self.auth = auth or Authenticator()
        """Who is calling (used by ``@rpc``; the registry scopes sessions to that principal)."""
        self.uploads = uploads or UploadGuard(UploadLimits(), registry)

    # -- sessions -----------------------------------------------------------------------
    @rpc("CreateSession")
    def CreateSession(self, request_iterator: Iterator[pb.CreateSessionRequest], context) -> pb.Session:  # noqa: N802, ANN001
        with self.uploads.upload(request_iterator, context) as requests:
            header = self.uploads.header(next(requests, None))
            if header.HasField("pacs"):
                voxels, spacing = self._fetch(header.pacs)
            else:
                voxels = self.uploads.receive(header, requests)
                spacing = header_spacing(header)
            window = None
            if header.preprocessing.window_width > 0:
                window = Window(header.preprocessing.window_width, header.preprocessing.window_level)
            is_video = header.kind == pb.STUDY_KIND_VIDEO
            slices = to_uint8(voxels, header.preprocessing.preset or ("none" if is_video else "auto"), window)
            del voxels  # the raw upload is not needed once windowed
            tracker = Tracker(self.backend, slices, self.tracker_options)
            entry = self.registry.add(tracker, StudyInfo(spacing, header.label, is_video))
        return self._describe(entry)

    def _fetch(self, reference: pb.PacsReference) -> tuple[np.ndarray, tuple[float, float, float]]:
        if self.fetch_study is None:
            raise PreconditionFailed("no PACS endpoint is configured on this server: upload the voxels instead")
        voxels, spacing = self.fetch_study(reference)
        self.uploads.check_study(voxels.shape)
        return voxels, spacing

    @rpc("GetSession")
    def GetSession(self, request: pb.GetSessionRequest, context) -> pb.Session:  # noqa: N802, ANN001
        return self._describe(self.registry.get(request.session_id))

    @rpc("ListSessions")
    def ListSessions(self, request: pb.ListSessionsRequest, context) -> pb.ListSessionsResponse:  # noqa: N802, ANN001
        return pb.ListSessionsResponse(sessions=[self._describe(e) for e in self.registry.list()])

    @rpc("CloseSession")
    def CloseSession(self, request: pb.CloseSessionRequest, context) -> pb.CloseSessionResponse:  # noqa: N802, ANN001
        return pb.CloseSessionResponse(closed=self.registry.close(request.session_id))

    # -- prompts and propagation --------------------------------------------------------
    @rpc("AddPrompt")
    def AddPrompt(self, request: pb.AddPromptRequest, context) -> pb.SliceResult:  # noqa: N802, ANN001
        check_prompt_mask(request, self.registry.get(request.session_id).tracker)
        prompt = prompt_from_pb(request)
        with self.registry.claim(request.session_id) as entry:
            tracker = entry.tracker
            if prompt.points is not None and prompt.box is None and request.keep_previous_points:
                result = tracker.add_prompt(prompt.obj_id, prompt.frame, points=prompt.points, labels=prompt.labels,
                                            clear_old=False)
            else:
                result = apply_prompt(tracker, prompt)
            entry.prompts.setdefault(prompt.obj_id, []).append(prompt)
            masks = result.masks(tracker.height, tracker.width)
            entry.results.store(result, masks)
            return _slice_message(result, masks, tracker, "prompt", 1, 1, request.mask.encoding)

    @rpc("Propagate")
    def Propagate(self, request: pb.PropagateRequest, context) -> Iterator[pb.SliceResult]:  # noqa: N802, ANN001
        with self.registry.claim(request.session_id, busy=True) as entry:
            protocol = request.protocol
            if protocol == pb.PROTOCOL_UNSPECIFIED:
                protocol = pb.PROTOCOL_IN_STATE if entry.study.is_video else pb.PROTOCOL_MEDSAM2_3D
            slice_range = _range(request, entry.tracker.num_frames)
            if protocol == pb.PROTOCOL_MEDSAM2_3D:
                stream, total, union = self._volume_protocol(entry, slice_range)
            else:
                stream, total, union = self._in_state(entry, request, slice_range)
            done = 0
            started = time.perf_counter()
            for pass_name, result in stream:
                self.registry.account(entry)  # state caps; ends here within a slice if the session was closed
                if not context.is_active():
                    log.info("session %s: propagation cancelled after %d slices", entry.session_id, done)
                    return
                done += 1
                masks = result.masks(entry.tracker.height, entry.tracker.width)
                entry.results.store(result, masks, union=union)
                now = time.perf_counter()
                metrics.SLICE_SECONDS.labels(backend=self.backend.name).observe(now - started)
                metrics.SLICES.labels(backend=self.backend.name).inc()
                started = now
                yield _slice_message(result, masks, entry.tracker, pass_name, done, total, request.encoding)

    def _volume_protocol(self, entry: SessionEntry, slice_range: tuple[int, int] | None):  # noqa: ANN202
        keys = [_key_prompt(obj_id, prompts) for obj_id, prompts in entry.prompts.items()]
        if not keys:
            raise PreconditionFailed("no prompts yet: add a box, points or a mask before propagating")
        entry.results.clear([p.obj_id for p in keys])
        total = volume_protocol_length(entry.tracker, keys, slice_range)
        return iter_volume(entry.tracker, keys, slice_range), total, True

    def _in_state(self, entry: SessionEntry, request: pb.PropagateRequest, slice_range: tuple[int, int] | None):  # noqa: ANN202
        tracker = entry.tracker
        direction = DIRECTIONS[request.direction]
        start = request.start_slice if request.HasField("start_slice") else None
        if not tracker.objects:
            raise PreconditionFailed("no prompts yet: add a box, points or a mask before propagating")
        origin = start if start is not None else min(t for o in tracker.objects.values() for t in (*o.cond, *o.pending_cond))
        passes = [False, True] if direction is Direction.BOTH else [direction is Direction.BACKWARD]
        first, last = slice_range if slice_range is not None else (0, tracker.num_frames - 1)
        if not first <= origin <= last:
            raise InvalidInput(f"start slice {origin} is outside the slice range {first},{last}")
        total = 0
        for reverse in passes:
            total += (origin - first + 1 if origin > 0 else 0) if reverse else (last - origin + 1)

        def stream() -> Iterator[tuple[str, FrameResult]]:
            for reverse in passes:
                limit = (origin - first) if reverse else (last - origin)
                chosen = Direction.BACKWARD if reverse else Direction.FORWARD
                for result in tracker.propagate(chosen, start=origin, limit=max(limit, 0)):
                    yield chosen.value, result

        return stream(), total, False

    # -- results and resets -------------------------------------------------------------
    @rpc("GetResult")
    def GetResult(self, request: pb.GetResultRequest, context) -> Iterator[pb.ResultChunk]:  # noqa: N802, ANN001
        with self.registry.claim(request.session_id) as entry:
            labels = entry.results.labels()
            object_ids = entry.results.object_ids
            spacing = entry.study.spacing
        fmt = request.format or pb.RESULT_FORMAT_NPZ
        data = _encode_result(labels, spacing, fmt)
        size = request.chunk_bytes or DEFAULT_CHUNK_BYTES
        for offset in range(0, max(len(data), 1), size):
            yield pb.ResultChunk(data=data[offset: offset + size], offset=offset, total_bytes=len(data), format=fmt,
                                 shape=list(labels.shape), object_ids=object_ids)

    @rpc("ResetObjects")
    def ResetObjects(self, request: pb.ResetObjectsRequest, context) -> pb.Session:  # noqa: N802, ANN001
        with self.registry.claim(request.session_id) as entry:
            if request.all:
                entry.tracker.reset()
                entry.prompts.clear()
                entry.results.clear()
            else:
                unknown = [o for o in request.object_ids if o not in entry.tracker.objects and o not in entry.prompts]
                if unknown:
                    raise NotFound(f"unknown object ids {unknown}: known ids are {sorted(entry.prompts)}")
                for obj_id in request.object_ids:
                    if obj_id in entry.tracker.objects:
                        entry.tracker.reset(obj_id)
                    entry.prompts.pop(obj_id, None)
                entry.results.clear(list(request.object_ids))
            return self._describe(entry)

    def _describe(self, entry: SessionEntry) -> pb.Session:
        tracker = entry.tracker
        return pb.Session(
            session_id=entry.session_id,
            shape=[tracker.num_frames, tracker.height, tracker.width],
            spacing_mm=list(entry.study.spacing),
            object_ids=sorted(set(entry.prompts) | set(tracker.objects)),
            state_bytes=entry.state_bytes,
            idle_seconds=entry.idle_seconds(),
            expires_in_seconds=self.registry.expires_in(entry),
            label=entry.study.label,
            backend=self.backend.name,
            busy=entry.busy,
        )


def _key_prompt(obj_id: int, prompts: list[ObjectPrompt]) -> ObjectPrompt:
    # The 3D protocol restarts from each object's latest box or mask; clicks are in-state corrections.
    for prompt in reversed(prompts):
        if prompt.box is not None or prompt.mask is not None:
            return prompt
    return prompts[-1]


def _range(request: pb.PropagateRequest, num_frames: int) -> tuple[int, int] | None:
    if not request.HasField("first_slice") and not request.HasField("last_slice"):
        return None
    first = request.first_slice if request.HasField("first_slice") else 0
    last = request.last_slice if request.HasField("last_slice") else num_frames - 1
    if last >= num_frames or first > last:
        raise InvalidInput(f"slice range {first},{last} does not fit the study's {num_frames} slices (0..{num_frames - 1})")
    return first, last


def _slice_message(result: FrameResult, masks: np.ndarray, tracker: Tracker, pass_name: str, done: int, total: int,
                   encoding: int) -> pb.SliceResult:
    objects = []
    for i, obj_id in enumerate(result.obj_ids):
        out = tracker.objects[obj_id].output(result.frame) if obj_id in tracker.objects else None
        score = out.object_score if out is not None else -1024.0
        objects.append(pb.ObjectMask(object_id=obj_id, mask=encode_mask(masks[i], encoding), object_score=score))
    return pb.SliceResult(slice=result.frame, objects=objects, done=done, total=total, **{"pass": pass_name})


def _encode_result(labels: np.ndarray, spacing: tuple[float, float, float], fmt: int) -> bytes:
    if fmt == pb.RESULT_FORMAT_RAW_LABELS:
        return labels.astype("<u2").tobytes()
    if fmt == pb.RESULT_FORMAT_NIFTI_GZ:
        import nibabel as nib

        z, y, x = spacing
        image = nib.Nifti1Image(np.ascontiguousarray(labels.transpose(2, 1, 0)), np.diag([x, y, z, 1.0]))
        return gzip.compress(image.to_bytes(), compresslevel=6)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, segs=labels, spacing=np.asarray(spacing))
    return buffer.getvalue()
