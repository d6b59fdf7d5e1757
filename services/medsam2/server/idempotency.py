"""Request ids: a retry of the same request gets the first reply; the same id with another request is refused.

A client sends a fresh request id with each change and the same id only to retry it. The server remembers, per
id, a digest of the request it answered (the request without its id, serialized deterministically, plus an
upload's voxels), and compares a later request with that id by its digest: equal, it is a retry and gets the
first reply; different, it is INVALID_ARGUMENT with the reason ``REQUEST_ID_REUSED`` instead of a silent answer
to another question. Ids are scoped to their principal (CreateSession's by the principal, the others by the
session, which belongs to one principal).
"""

from __future__ import annotations

import hashlib

import numpy as np
from google.protobuf.message import Message

from medsam2.errors import InvalidInput


def request_digest(request: Message, voxels: np.ndarray | None = None) -> bytes:
    """sha256 of ``request`` without its request id (and of the uploaded ``voxels``, which a retry sends again)."""
    copy = type(request)()
    copy.CopyFrom(request)
    if "request_id" in copy.DESCRIPTOR.fields_by_name:
        copy.ClearField("request_id")  # type: ignore[arg-type]
    digest = hashlib.sha256(copy.SerializeToString(deterministic=True))
    if voxels is not None:
        digest.update(memoryview(np.ascontiguousarray(voxels)).cast("B"))  # type: ignore[arg-type]  # no copy
    return digest.digest()


def check_same(earlier: bytes, digest: bytes, request_id: str) -> None:
    """Refuse a request whose id was used for a different request (``REQUEST_ID_REUSED``)."""
    if earlier != digest:
        raise InvalidInput(
            f"request_id {request_id!r} was already used for a different request: send a new request id for a new "
            "request, and the same one only to retry the same request",
            field="request_id",
            reason="REQUEST_ID_REUSED",
        )
