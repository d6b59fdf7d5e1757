"""Rebuilding a session this replica does not hold: open its study from the session store and replay its journal."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from medsam2.api.pb.medsam2.v1 import segmentation_pb2 as pb
from medsam2.errors import NotFound, PreconditionFailed
from medsam2.server import metrics
from medsam2.server.durability import JOURNALED

if TYPE_CHECKING:
    from medsam2.server.servicer import SegmentationServicer

log = logging.getLogger(__name__)


def rebuild(servicer: SegmentationServicer, session_id: str, owner: str) -> bool:
    """Open a session this replica does not hold from the session store, and replay its journal.

    Called by the registry on a miss. The replayed requests run the same code as the RPCs (without their
    authentication, which the triggering request already passed), so the state is the lost replica's.
    """
    durability = servicer.durability
    assert durability is not None
    record = durability.store.load(session_id)
    if record is None or record.owner != owner:
        return False
    started = time.perf_counter()
    with durability.rebuilding(session_id):
        if session_id in {e.session_id for e in servicer.registry.list(principal=owner)}:
            return True  # another request rebuilt it while this one waited
        header = pb.StudyHeader.FromString(record.header)
        versions = servicer.registry.versions
        version = record.model_version if versions is not None else None
        if version is not None and versions is not None:
            try:
                versions.hold(version)  # the version it was opened with, whatever is current here
            except NotFound as exc:
                raise PreconditionFailed(
                    f"session {session_id} was opened on model version {version}, which this replica cannot "
                    f"load ({exc}): open the study again",
                    reason="MODEL_VERSION_UNAVAILABLE",
                ) from exc
        try:
            servicer.open_entry(
                header,
                lambda: durability.study_voxels(session_id, header),
                session_id=session_id,
                model_version=version,
            )
        finally:
            if version is not None and versions is not None:
                versions.release(version)  # the session's own pin holds it from here
        try:
            for item in durability.store.journal(session_id):
                request = JOURNALED[item.method].FromString(item.request)
                handler = getattr(type(servicer), item.method).__wrapped__
                reply = handler(servicer, request, _REPLAY_CONTEXT)
                if item.method == "Propagate":
                    for _ in reply:  # run the whole propagation again
                        pass
        except Exception:
            servicer.registry.discard(session_id)  # never serve a half-replayed session; the next call retries
            raise
        servicer.registry.rebuilt(session_id)
    # Counted here, not in ``rebuilding``: a request that waited and found the session rebuilt rebuilt nothing.
    metrics.REBUILDS.inc()
    metrics.REBUILD_SECONDS.observe(time.perf_counter() - started)
    log.info("session %s rebuilt from the session store", session_id)
    return True


class _ReplayContext:
    """The context a journal replay runs under: always active, as the original stream ran to its end."""

    def is_active(self) -> bool:
        """A replayed propagation never stops early."""
        return True


_REPLAY_CONTEXT = _ReplayContext()
