"""CreateSession uploads under guard: a cap on concurrent uploads, an idle timeout, a total deadline, and bounds
computed before anything is allocated.

A stalled client holds a worker thread for as long as it waits; without a
guard, as many stalled uploads as there are workers wedge the whole server.
Here at most ``max_concurrent`` uploads run at once, ``max_per_principal`` of any one
caller (the next one is refused
at once with RESOURCE_EXHAUSTED and retry info), and a watchdog cancels an
upload that sent nothing for ``idle_timeout_s`` or is still running after
``deadline_s``.

The size check happens on the header alone, in Python integers (a shape whose
product overflows int64 stays exact), and counts what the study will cost once
open: every slice is resized to 512x512 for the model, so a few-KB study of
thousands of 1x1 slices costs as much as thousands of full slices.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from medsam2.api.convert import header_dtype, header_shape
from medsam2.errors import CapacityExceeded, ClientCancelled, InvalidInput, UploadTimedOut, UploadTruncated
from medsam2.graphs import IMAGE_SIZE
from medsam2.server import auth
from medsam2.server.config import FromSettings, from_setting
from medsam2.server.request_checks import check_request
from medsam2.server.sessions import SessionRegistry, study_voxels

log = logging.getLogger(__name__)

RETRY_UPLOAD_S = 5.0


@dataclass(frozen=True, slots=True)
class UploadLimits(FromSettings):
    """Bounds of CreateSession streams."""

    max_concurrent: int = from_setting("max_concurrent_uploads")
    idle_timeout_s: float = from_setting("upload_idle_timeout_s")
    deadline_s: float = from_setting("upload_deadline_s")
    max_per_principal: int = from_setting("max_uploads_per_principal")
    """Uploads of one principal at once, so one tenant's stalled clients cannot take every slot (0: half the cap)."""

    @property
    def per_principal(self) -> int:
        """Effective per-principal cap."""
        return self.max_per_principal or max(1, self.max_concurrent // 2)


def study_cost(shape: tuple[int, ...]) -> tuple[int, int]:
    """(voxels at 512x512 or the slice size if larger, bytes of session state) of an open study of ``shape``.

    State: the model inputs (one uint8 512x512 plane per slice and channel), the tracker's copy of the slices at
    their own size (kept for SaveAnnotation; none for grey 512x512 slices, which are the inputs themselves) and one
    object's bit-packed result. An RGB video [frames, rows, columns, 3] has three channels.
    """
    slices, rows, columns = (int(v) for v in shape[:3])
    channels = int(shape[3]) if len(shape) == 4 else 1
    plane = rows * columns
    resized_voxels = slices * max(plane, IMAGE_SIZE * IMAGE_SIZE)
    inputs = channels * slices * IMAGE_SIZE * IMAGE_SIZE
    frames_copy = 0 if channels == 1 and (rows, columns) == (IMAGE_SIZE, IMAGE_SIZE) else channels * slices * plane
    state_bytes = inputs + frames_copy + slices * ((plane + 7) // 8)
    return resized_voxels, state_bytes


@dataclass(slots=True, eq=False)
class _Watch:
    context: Any
    started: float
    waiting_since: float | None = None  # set while the server waits for the client's next message
    expired: str = ""


class UploadGuard:
    """Admits, watches and receives CreateSession uploads."""

    def __init__(self, limits: UploadLimits, registry: SessionRegistry) -> None:
        self.limits = limits
        self.registry = registry
        self._slots = threading.BoundedSemaphore(max(1, limits.max_concurrent))
        self._watches: set[_Watch] = set()  # guarded by _lock
        self._per_principal: dict[str, int] = {}  # guarded by _lock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None

    @contextmanager
    def upload(self, requests: Iterator[Any], context: Any) -> Iterator[Iterator[Any]]:
        """Take an upload slot and watch ``requests`` for stalls while the caller reads them."""
        principal = auth.current_principal() or auth.ANONYMOUS
        with self._lock:
            mine = self._per_principal.get(principal, 0)
            if mine >= self.limits.per_principal:
                raise CapacityExceeded(
                    f"you have {mine} uploads in flight (the limit per principal): finish one first",
                    reason="UPLOADS_FULL",
                    retry_after_s=RETRY_UPLOAD_S,
                )
            if not self._slots.acquire(blocking=False):
                raise CapacityExceeded(
                    f"{self.limits.max_concurrent} uploads are already in flight (the limit): retry in a few seconds",
                    reason="UPLOADS_FULL",
                    retry_after_s=RETRY_UPLOAD_S,
                )
            self._per_principal[principal] = mine + 1
            watch = _Watch(context, time.monotonic())
            self._watches.add(watch)
            self._start_monitor()
        try:
            yield self._watched(requests, watch)
        finally:
            with self._lock:
                self._watches.discard(watch)
                self._per_principal[principal] -= 1
                if not self._per_principal[principal]:
                    del self._per_principal[principal]
            self._slots.release()

    def _watched(self, requests: Iterator[Any], watch: _Watch) -> Iterator[Any]:
        # Only time spent waiting for the client counts: a PACS fetch or windowing after the header does not.
        iterator = iter(requests)
        try:
            while True:
                watch.waiting_since = time.monotonic()
                try:
                    message = next(iterator)
                except StopIteration:
                    break
                finally:
                    watch.waiting_since = None
                yield message
        except grpc.RpcError as exc:
            if watch.expired:
                raise UploadTimedOut(watch.expired) from exc
            raise ClientCancelled("the client cancelled or disconnected during the upload") from exc
        if watch.expired:
            raise UploadTimedOut(watch.expired)

    def header(self, first: Any) -> Any:
        """The study header of the first CreateSession message, its surface checked."""
        if first is None or first.WhichOneof("part") != "header":
            raise InvalidInput("the first CreateSession message must be the study header", field="header")
        check_request(first)
        return first.header

    def check_study(self, shape: tuple[int, ...], itemsize: int = 1) -> None:
        """Refuse, before allocation, a study over the voxel limit (at 512x512) or the caller's state quota."""
        voxels = study_voxels(shape)
        self.registry.check_study_size(voxels)
        resized, state_bytes = study_cost(shape)  # type: ignore[arg-type]
        limit = self.registry.limits.max_study_voxels
        if resized > limit:
            raise CapacityExceeded(
                f"study of shape {list(shape)} becomes {resized} voxels once each slice is resized to "
                f"{IMAGE_SIZE}x{IMAGE_SIZE} for the model; the limit is {limit}",
                reason="STUDY_TOO_LARGE",
            )
        self.registry.admit(state_bytes)

    def receive(self, header: Any, chunks: Iterator[Any]) -> np.ndarray:
        """The voxels of an upload, after its header passed ``check_study``; exact length enforced."""
        shape = header_shape(header)
        dtype = header_dtype(header)
        self.check_study(shape, dtype.itemsize)
        expected = math.prod(shape) * dtype.itemsize
        buffer = bytearray()
        for message in chunks:
            if message.WhichOneof("part") != "voxels":
                raise InvalidInput("only voxel chunks may follow the header", field="voxels")
            if len(buffer) + len(message.voxels) > expected:
                raise InvalidInput(
                    f"upload is larger than the header says: more than {expected} bytes "
                    f"for shape {list(shape)} of {dtype.name}",
                    field="voxels",
                )
            buffer += message.voxels
        if len(buffer) != expected:
            raise UploadTruncated(
                f"upload ended after {len(buffer)} of {expected} bytes: the stream was truncated", field="voxels"
            )
        return np.frombuffer(buffer, dtype).reshape(shape)

    def close(self) -> None:
        """Stop the watchdog."""
        self._stop.set()

    def _start_monitor(self) -> None:
        if self._monitor is None:
            self._monitor = threading.Thread(target=self._watch_loop, name="medsam2-upload-watch", daemon=True)
            self._monitor.start()

    def _watch_loop(self) -> None:
        interval = max(0.05, min(1.0, self.limits.idle_timeout_s / 4))
        while not self._stop.wait(interval):
            now = time.monotonic()
            with self._lock:
                watches = list(self._watches)
            for watch in watches:
                waiting_since = watch.waiting_since
                if watch.expired or waiting_since is None:
                    continue
                if now - waiting_since > self.limits.idle_timeout_s:
                    watch.expired = (
                        f"upload sent nothing for {self.limits.idle_timeout_s:g} s "
                        f"(the idle timeout): send the voxels without pausing"
                    )
                elif now - watch.started > self.limits.deadline_s:
                    watch.expired = f"upload did not finish within {self.limits.deadline_s:g} s (the total deadline)"
                else:
                    continue
                log.warning("cancelling an upload: %s", watch.expired)
                watch.context.cancel()
