"""The SegmentationService: each RPC converts, calls the engine under the session's lock, converts back.

Volumes and videos alike are driven through ``engine.session.Session`` (the 3D protocol or in-state tracking is
the session's business); opening studies, results files, descriptions, rebuilds and reply keeping live in their
own modules beside this one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterator

import numpy as np
from google.protobuf.message import Message

from medsam2.api.convert import (
    DIRECTIONS,
    encode_mask,
    prompt_from_pb,
    segment_spec_from_pb,
)
from medsam2.api.pb.medsam2.v1 import segmentation_pb2 as pb
from medsam2.api.pb.medsam2.v1 import segmentation_pb2_grpc as pb_grpc
from medsam2.engine.session import (
    FrameResult,
    StageBackend,
    TrackerOptions,
    changed_slices,
)
from medsam2.errors import InvalidInput, NotFound, PreconditionFailed
from medsam2.io.dicom_seg import default_segments
from medsam2.models.provenance import ModelProvenance
from medsam2.pacs.service import PacsStudies
from medsam2.server import metrics
from medsam2.server.annotation_store import AnnotationStore
from medsam2.server.auth import ANONYMOUS, Authenticator, current_principal
from medsam2.server.describe import describe_session, model_of, server_info
from medsam2.server.drain import Drain
from medsam2.server.durability import Durability
from medsam2.server.idempotency import check_same, earlier_reply, keep_reply, remember, request_digest
from medsam2.server.pacs_fetches import PacsFetchGuard, PacsFetchLimits
from medsam2.server.pacs_store import store_on_pacs
from medsam2.server.rebuild import rebuild
from medsam2.server.request_checks import check_prompt_mask
from medsam2.server.result_chunks import (
    check_format,
    chunk_size,
    image_chunks,
    result_chunks,
)
from medsam2.server.sessions import SessionEntry, SessionRegistry
from medsam2.server.status import rpc
from medsam2.server.study_open import open_study
from medsam2.server.training_case import save_training_case
from medsam2.server.uploads import UploadGuard, UploadLimits

log = logging.getLogger(__name__)

REMEMBERED_CREATES = 1024
"""CreateSession request ids remembered for retries (oldest forgotten first)."""


class SegmentationServicer(pb_grpc.SegmentationServiceServicer):
    """Thin RPC layer over the session registry and the tracking engine."""

    def __init__(
        self,
        registry: SessionRegistry,
        backend: StageBackend,
        tracker_options: TrackerOptions,
        pacs: PacsStudies | None = None,
        model: ModelProvenance | None = None,
        max_message_bytes: int = 0,
        *,
        auth: Authenticator | None = None,
        uploads: UploadGuard | None = None,
        pacs_fetches: PacsFetchGuard | None = None,
        durability: Durability | None = None,
        annotations: AnnotationStore | None = None,
        drain: Drain | None = None,
    ) -> None:
        self.registry = registry
        self.backend = backend
        self.tracker_options = tracker_options
        self.pacs = pacs
        self.model = model or ModelProvenance(version=1)
        self.max_message_bytes = max_message_bytes
        self._created: OrderedDict[tuple[str, str], tuple[bytes, str]] = OrderedDict()
        """(principal, CreateSession request id) -> (the request's digest, the session it opened)."""
        self._created_lock = threading.Lock()
        self.auth = auth or Authenticator()
        """Who is calling (used by ``@rpc``; the registry scopes sessions to that principal)."""
        self.uploads = uploads or UploadGuard(UploadLimits(), registry)
        self.pacs_fetches = pacs_fetches or PacsFetchGuard(PacsFetchLimits())
        """PACS fetches in flight, capped apart from uploads."""
        self.durability = durability
        """The session store's journal (None: sessions live in this replica's memory only)."""
        self.annotations = annotations or AnnotationStore(None)
        """Where SaveAnnotation writes training cases (disabled unless --annotations-dir is set)."""
        self.drain = drain or Drain()
        """Calls in flight and the shutdown clock (``@rpc`` counts calls; streams end at the grace period)."""
        if durability is not None:
            registry.rebuild = lambda session_id, owner: rebuild(self, session_id, owner)

    # -- sessions -----------------------------------------------------------------------
    @rpc("CreateSession")
    def CreateSession(self, request_iterator: Iterator[pb.CreateSessionRequest], context) -> pb.Session:  # noqa: ANN001
        with self.uploads.upload(request_iterator, context) as requests:
            header = self.uploads.header(next(requests, None))
            principal = current_principal() or ANONYMOUS
            digests: list[bytes] = []
            upload: list[np.ndarray] = []  # read once: for a retry's digest first, then for the session

            def receive() -> np.ndarray:
                if not upload:
                    upload.append(self.uploads.receive(header, requests))
                    if header.request_id:
                        digests.append(request_digest(header, upload[0]))  # a retry sends the same voxels again
                return upload.pop()

            if header.request_id:
                with self._created_lock:
                    earlier = self._created.get((principal, header.request_id))
                if earlier is None and self.durability is not None:
                    earlier = self.durability.created_for(principal, header.request_id)
                if earlier is not None:
                    if not header.HasField("pacs"):
                        upload.append(receive())
                    check_same(earlier[0], digests[0] if digests else request_digest(header), header.request_id)
                    try:
                        return describe_session(self, self.registry.get(earlier[1]))
                    except NotFound:
                        pass  # closed or expired since: open it again, with the voxels already read
            if not header.HasField("pacs"):
                entry = self.open_entry(header, receive)
        if header.HasField("pacs"):
            # Out of the upload slot: a PACS fetch waits on the PACS, not on the client, and takes a PACS slot.
            entry = self.open_entry(header, _no_upload, context=context)
        if header.request_id:
            digest = digests[0] if digests else request_digest(header)
            if self.durability is not None and entry.durable:
                self.durability.remember_created(entry.owner, header.request_id, entry.session_id, digest)
            with self._created_lock:
                self._created[(principal, header.request_id)] = (digest, entry.session_id)
                while len(self._created) > REMEMBERED_CREATES:
                    self._created.popitem(last=False)
        return describe_session(self, entry)

    def open_entry(
        self,
        header: pb.StudyHeader,
        receive: Callable[[], np.ndarray],
        *,
        session_id: str | None = None,
        model_version: int | None = None,
        context: object | None = None,
    ) -> SessionEntry:
        """Open a session on ``header``'s study: fetched from PACS, or the voxels ``receive`` returns.

        ``session_id`` reopens a stored session under its own id (a rebuild) on the ``model_version`` it was
        opened with; the store is then not written. A PACS fetch ends when ``context``'s call does.
        """
        opened = open_study(self, header, receive, context=context)
        session, study, image, stored = opened.session, opened.study, opened.image, opened.stored
        entry = self.registry.add(session, study, session_id=session_id, model_version=model_version, image=image)
        if self.durability is not None and stored is not None:
            try:
                self.durability.created(entry.session_id, entry.owner, header, stored, entry.model_version)
            except Exception:
                self.registry.close(entry.session_id)  # not acknowledged: nothing may remain of it
                raise
            entry.durable = True
        return entry

    @rpc("GetSession")
    def GetSession(self, request: pb.GetSessionRequest, context) -> pb.Session:  # noqa: ANN001
        entry = self.registry.get(request.session_id)
        described = describe_session(self, entry)
        if self.durability is not None and entry.durable:
            described.history.extend(self.durability.history(entry.session_id))
        return described

    @rpc("ListSessions")
    def ListSessions(self, request: pb.ListSessionsRequest, context) -> pb.ListSessionsResponse:  # noqa: ANN001
        return pb.ListSessionsResponse(sessions=[describe_session(self, e) for e in self.registry.list()])

    @rpc("CloseSession")
    def CloseSession(self, request: pb.CloseSessionRequest, context) -> pb.CloseSessionResponse:  # noqa: ANN001
        closed = self.registry.close(request.session_id)
        if self.durability is not None:
            # Held here or not, a stored session of the caller's is closed for every replica.
            record = self.durability.store.load(request.session_id)
            if record is not None and record.owner == (current_principal() or ANONYMOUS):
                self.durability.closed(request.session_id)
                closed = True
        return pb.CloseSessionResponse(closed=closed)

    # -- prompts and propagation --------------------------------------------------------
    @rpc("AddPrompt")
    def AddPrompt(self, request: pb.AddPromptRequest, context) -> pb.SliceResult:  # noqa: ANN001
        with self.registry.claim(request.session_id) as entry:
            check_prompt_mask(request, entry.session)  # sizes against the slice before any mask is decoded
            prompt = prompt_from_pb(request)
            replay = f"prompt:{request.request_id}"
            digest = request_digest(request) if request.request_id else b""
            if request.request_id and replay in entry.replies:
                earlier_digest, earlier = entry.replies[replay]
                check_same(earlier_digest, digest, request.request_id)
                return earlier
            spec = None
            if request.HasField("object_info"):
                default = entry.objects.get(prompt.obj_id) or default_segments([prompt.obj_id])[0]
                spec = segment_spec_from_pb(prompt.obj_id, request.object_info, default)
            session = entry.session
            # Kept only once journaled: a refused store write leaves the session as it was, and the retry
            # (same request id) applies the prompt once.
            with entry.all_or_nothing():
                result = session.add_prompt(
                    prompt, keep_previous_points=request.keep_previous_points, correction=request.correction
                )
                if spec is not None:
                    entry.objects[prompt.obj_id] = spec
                entry.results.store(result, session.result_masks(result))
                # Every object's mask on the slice, as SliceResult promises: the prompted ones as just decoded.
                scores = dict(zip(result.obj_ids, session.scores(result), strict=False))
                stored = entry.results.slice_masks(result.frame)
                reply = _slice_reply(
                    result.frame,
                    stored,
                    {o: scores[o] if o in scores else session.score(o, result.frame) for o in stored},
                    "prompt",
                    1,
                    1,
                    request.encoding,
                    final=True,
                )
                self._journal(entry, "AddPrompt", request)
            if request.request_id:
                remember(entry.replies, replay, (digest, reply))
            return reply

    @rpc("Propagate")
    def Propagate(self, request: pb.PropagateRequest, context) -> Iterator[pb.SliceResult]:  # noqa: ANN001
        # Unknown enum values never get here: @rpc's request check refuses them for every message.
        with self.registry.claim(request.session_id, busy=True) as entry:
            before = entry.checkpoint()
            protocol = request.protocol
            if protocol == pb.PROTOCOL_UNSPECIFIED:
                protocol = pb.PROTOCOL_IN_STATE if entry.study.is_video else pb.PROTOCOL_MEDSAM2_3D
            session = entry.session
            plan = session.plan(
                three_d=protocol == pb.PROTOCOL_MEDSAM2_3D,
                first=request.first_slice if request.HasField("first_slice") else None,
                last=request.last_slice if request.HasField("last_slice") else None,
                direction=DIRECTIONS[request.direction],
                start=request.start_slice if request.HasField("start_slice") else None,
            )
            stream = session.propagate(plan)
            total = plan.total
            finals: dict[int, dict[int, np.ndarray]] = {}
            completed = False
            try:
                completed = yield from self._stream(entry, stream, total, request.encoding, context, final=plan.final)
            finally:
                if not completed:
                    # Cut short (cancelled, refused by a limit, closed, drained): never journaled, so not kept. The
                    # session's 3D masks are empty or partial until every pass has run: they must not replace these.
                    before.restore()
                elif plan.three_d:
                    # The session's masks are the result: passes merged, corrections applied, largest component.
                    # During the stream the store held each slice's last streamed mask, so what changes here is
                    # exactly what the stream has not yet told its client.
                    masks = session.masks()
                    finals = changed_slices(entry.results.masks(), masks)
                    for obj_id, mask in masks.items():
                        entry.results.set_object(obj_id, mask)
            if completed:
                try:
                    self._journal(entry, "Propagate", request)
                except Exception:
                    before.restore()  # not stored, so not kept: the retry propagates again from the same state
                    raise
                # The truth before the stream closes: each slice whose stored masks differ from what was streamed.
                for frame, changed in sorted(finals.items()):
                    if not context.is_active():
                        return
                    scores = {o: session.score(o, frame) for o in changed}
                    yield _slice_reply(frame, changed, scores, "final", total, total, request.encoding, final=True)

    def _stream(
        self,
        entry: SessionEntry,
        stream: Iterator[tuple[str, FrameResult]],
        total: int,
        encoding: int,
        context,  # noqa: ANN001
        *,
        final: bool,
    ) -> Generator[pb.SliceResult, None, bool]:
        """Stream each slice's masks (``final``: stored as streamed); returns False when the client went away."""
        done = 0
        started = time.perf_counter()
        for pass_name, result in stream:
            self.registry.account(entry)  # state caps; ends here within a slice if the session was closed
            self.drain.check()  # past the shutdown grace period: UNAVAILABLE, SERVER_SHUTTING_DOWN; clients retry
            if not context.is_active():
                log.info("session %s: propagation cancelled after %d slices", entry.session_id, done)
                return False
            done += 1
            masks = entry.session.result_masks(result)
            # The store keeps each slice's last streamed mask; the 3D protocol's masks replace it at the end.
            entry.results.store(result, masks)
            now = time.perf_counter()
            metrics.SLICE_SECONDS.labels(backend=self.backend.name).observe(now - started)
            metrics.SLICES.labels(backend=self.backend.name).inc()
            started = now
            scores = entry.session.scores(result)
            yield _slice_reply(
                result.frame,
                dict(zip(result.obj_ids, masks, strict=False)),
                dict(zip(result.obj_ids, scores, strict=False)),
                pass_name,
                done,
                total,
                encoding,
                final=final,
            )
        return True

    # -- results, storing and resets ----------------------------------------------------
    @rpc("GetResult")
    def GetResult(self, request: pb.GetResultRequest, context) -> Iterator[pb.ResultChunk]:  # noqa: ANN001
        fmt = request.format or pb.RESULT_FORMAT_NPZ
        check_format(fmt)
        size = chunk_size(request.chunk_bytes, self.max_message_bytes)
        with self.registry.read(request.session_id) as entry:  # downloads share the session; changes wait
            chunks = result_chunks(entry, fmt, request.label_values, size, model_of(self, entry).short_sha)
        yield from chunks

    @rpc("GetSlices")
    def GetSlices(self, request: pb.GetSlicesRequest, context) -> Iterator[pb.SliceResult]:  # noqa: ANN001
        with self.registry.read(request.session_id) as entry:  # a reader, as GetResult
            slices = entry.results.shape[0]
            first = request.first_slice if request.HasField("first_slice") else 0
            last = request.last_slice if request.HasField("last_slice") else slices - 1
            if not first <= last < slices:
                raise InvalidInput(
                    f"slice range {first},{last} does not fit the study's {slices} slices (0..{slices - 1})",
                    field="last_slice" if last >= slices else "first_slice",
                )
            # Encoded under the lock (one slice at a time would let a propagation interleave with the reads).
            replies = []
            for frame in range(first, last + 1):
                masks = entry.results.slice_masks(frame)
                scores = {o: entry.session.score(o, frame) for o in masks}
                total = last - first + 1
                replies.append(
                    _slice_reply(frame, masks, scores, "stored", frame - first + 1, total, request.encoding, final=True)
                )
        yield from replies

    @rpc("GetImage")
    def GetImage(self, request: pb.GetImageRequest, context) -> Iterator[pb.ResultChunk]:  # noqa: ANN001
        # Read without the session's lock (see image_chunks); the owner check is the registry's, as elsewhere.
        entry = self.registry.get(request.session_id)
        yield from image_chunks(entry, chunk_size(request.chunk_bytes, self.max_message_bytes))

    @rpc("StoreResult")
    def StoreResult(self, request: pb.StoreResultRequest, context) -> pb.StoreResultResponse:  # noqa: ANN001
        if self.pacs is None:
            raise PreconditionFailed(
                "no PACS endpoint is configured on this server (MEDSAM2_PACS_<NAME>_URL)", reason="PACS_NOT_CONFIGURED"
            )
        if not request.endpoint:
            raise InvalidInput("StoreResult needs the name of a configured PACS endpoint", field="endpoint")
        self.pacs.config.get(request.endpoint)  # an unknown endpoint fails before any work
        with self.registry.claim(request.session_id) as entry:
            replay = f"store:{request.request_id}"
            earlier = (
                earlier_reply(self.durability, entry, replay, pb.StoreResultResponse, request, request.request_id)
                if request.request_id
                else None
            )
            if earlier is not None:
                return earlier
            reply = store_on_pacs(
                self.pacs, self.pacs_fetches, entry, request.endpoint, context, model_of(self, entry).short_sha
            )
            if request.request_id:
                keep_reply(self.durability, entry, replay, request, reply)
            log.info("session %s: stored SEG and SR on PACS %s", entry.session_id, request.endpoint)
            return reply

    @rpc("SaveAnnotation")
    def SaveAnnotation(self, request: pb.SaveAnnotationRequest, context) -> pb.SaveAnnotationResponse:  # noqa: ANN001
        self.annotations.require()  # a server without a store refuses before touching the session
        with self.registry.claim(request.session_id) as entry:
            replay = f"annotation:{request.request_id}"
            earlier = (
                earlier_reply(self.durability, entry, replay, pb.SaveAnnotationResponse, request, request.request_id)
                if request.request_id
                else None
            )
            if earlier is not None:
                return earlier
            reply = save_training_case(self.annotations, entry, request.case_name, model_of(self, entry))
            if request.request_id:
                keep_reply(self.durability, entry, replay, request, reply)
            log.info(
                "session %s: saved %d object(s) as training case %s",
                entry.session_id,
                len(reply.object_ids),
                reply.case_file,
            )
            return reply

    @rpc("GetServerInfo")
    def GetServerInfo(self, request: pb.GetServerInfoRequest, context) -> pb.ServerInfo:  # noqa: ANN001
        return server_info(self)

    @rpc("SetModelVersion")
    def SetModelVersion(self, request: pb.SetModelVersionRequest, context) -> pb.ServerInfo:  # noqa: ANN001
        principal = current_principal() or ANONYMOUS
        self.auth.require_admin(principal, "SetModelVersion")
        versions = self.registry.versions
        if versions is None:
            raise PreconditionFailed(
                "this server serves one unversioned model: export numbered versions (medsam2 export --version N) "
                "into its model repository to switch between them",
                reason="MODEL_NOT_VERSIONED",
            )
        versions.switch(request.version or None, by=principal)
        return server_info(self)

    @rpc("ResetObjects")
    def ResetObjects(self, request: pb.ResetObjectsRequest, context) -> pb.Session:  # noqa: ANN001
        with self.registry.claim(request.session_id) as entry:
            known = entry.session.object_ids()
            if request.all:
                ids = None
            else:
                unknown = [o for o in request.object_ids if o not in known]
                if unknown:
                    raise NotFound(
                        f"unknown object ids {unknown}: known ids are {known}",
                        reason="OBJECT_NOT_FOUND",
                        field="object_ids",
                    )
                ids = list(request.object_ids)
            with entry.all_or_nothing():  # kept only once journaled, as AddPrompt
                entry.session.reset(ids)
                entry.results.clear(ids)
                self._journal(entry, "ResetObjects", request)
            return describe_session(self, entry)

    def _journal(self, entry: SessionEntry, method: str, request: Message) -> None:
        """Record an accepted change of a durable session in the store, before it is acknowledged."""
        if self.durability is not None and entry.durable:
            self.durability.journal(entry.session_id, method, request)


def _no_upload() -> np.ndarray:
    raise AssertionError("a study from PACS receives no voxels from its client")


def _slice_reply(
    frame: int,
    masks: dict[int, np.ndarray],
    scores: dict[int, float],
    pass_name: str,
    done: int,
    total: int,
    encoding: int,
    *,
    final: bool,
) -> pb.SliceResult:
    """A SliceResult of some objects' masks on one slice."""
    objects = [
        pb.ObjectMask(object_id=obj_id, mask=encode_mask(mask, encoding), object_score=scores[obj_id])
        for obj_id, mask in masks.items()
    ]
    return pb.SliceResult(slice=frame, objects=objects, done=done, total=total, final=final, **{"pass": pass_name})
