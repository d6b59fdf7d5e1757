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
from typing import TYPE_CHECKING

import numpy as np
from google.protobuf.message import Message

from medsam2.errors import InvalidInput

if TYPE_CHECKING:
    from medsam2.server.durability import Durability
    from medsam2.server.sessions import SessionEntry


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


REMEMBERED_REPLIES = 32
"""AddPrompt, StoreResult and SaveAnnotation replies kept per session for retries, each (oldest forgotten first)."""


def earlier_reply(
    durability: Durability | None,
    entry: SessionEntry,
    key: str,
    reply_type: type[Message],
    request: Message,
    request_id: str,
) -> Message | None:
    """The reply already given to this request id: from this replica, or from the store after a failover.

    The same id with a different request is refused (``REQUEST_ID_REUSED``).
    """
    earlier = entry.replies.get(key)
    if earlier is None and durability is not None and entry.durable:
        earlier = durability.reply(entry.session_id, key, reply_type)
    if earlier is None:
        return None
    check_same(earlier[0], request_digest(request), request_id)
    return earlier[1]


def keep_reply(durability: Durability | None, entry: SessionEntry, key: str, request: Message, reply: Message) -> None:
    """Remember a reply whose work must not be repeated by a retry, here and (durable sessions) in the store."""
    digest = request_digest(request)
    remember(entry.replies, key, (digest, reply))
    if durability is not None and entry.durable:
        durability.remember_reply(entry.session_id, key, reply, digest)


def remember(replies: dict, key: str, reply: object) -> None:
    """Keep a reply for retries of its request id; only the latest few per kind (a retry follows its request)."""
    replies[key] = reply
    kind = key.split(":", 1)[0] + ":"
    keys = [k for k in replies if k.startswith(kind)]
    for old in keys[:-REMEMBERED_REPLIES]:
        del replies[old]
