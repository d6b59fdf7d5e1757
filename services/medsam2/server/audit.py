"""The audit log: one JSON line per RPC on its own logger, so operators can ship it apart from the service log.

A line holds the time, the principal, the RPC, the session id, the outcome (a
gRPC status name) and the duration. Never labels, UIDs or any patient data:
the caller passes only those fields, and nothing else is written.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

AUDIT_LOGGER = "medsam2.audit"
log = logging.getLogger(AUDIT_LOGGER)


def record(*, principal: str, rpc: str, session_id: str, outcome: str, duration_s: float) -> None:
    """Write one audit line."""
    _write(principal=principal, rpc=rpc, session_id=session_id, outcome=outcome, duration_s=round(duration_s, 4))


def model_version(*, principal: str, version: int | None, previous: int | None) -> None:
    """Write the audit line of a switch of the served model version (``principal``: the admin, or ``SIGHUP``)."""
    _write(principal=principal, event="model_version_switched", model_version=version, previous_model_version=previous)


def _write(**fields: object) -> None:
    """One JSON line: the time first, then ``fields`` in order."""
    if log.isEnabledFor(logging.INFO):
        log.info(json.dumps({"time": _now(), **fields}, separators=(",", ":")))


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z"


def configure(path: Path | None) -> None:
    """Send the audit log to ``path`` (JSON lines, appended) instead of the service log; None leaves it on the root."""
    log.setLevel(logging.INFO)
    if path is None:
        return
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.propagate = False
