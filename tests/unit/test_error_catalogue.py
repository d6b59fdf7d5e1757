"""One catalogue of error reasons: every reason the code raises is in it, docs/errors.md is generated from it and
fresh, and RetryInfo follows what it says a retry can do."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import grpc
from google.rpc import error_details_pb2

from medsam2.errors import REASON_BY_NAME, REASONS, CapacityExceeded, Medsam2Error
from medsam2.server.status import rich_status, status_for

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ROOT / "services" / "medsam2"
CLI_ONLY = {"MEDSAM2_ERROR", "DOWNLOAD_ERROR"}
"""Reasons of errors the command line raises and the service never returns."""


def _generator():
    spec = importlib.util.spec_from_file_location("gen_errors_doc", ROOT / "scripts" / "gen_errors_doc.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _raised_reasons() -> set[str]:
    """Every reason written in the sources: ``reason="X"`` at a raise, ``reason = "X"`` on an error type."""
    found: set[str] = set()
    for path in SOURCES.rglob("*.py"):
        if "/pb/" in str(path):
            continue
        found |= set(re.findall(r'\breason\s*=\s*"([A-Z][A-Z0-9_]+)"', path.read_text()))
    return found


def test_the_document_is_generated_from_the_table_and_fresh() -> None:
    generator = _generator()
    assert (ROOT / "docs" / "errors.md").read_text() == generator.render(), "run scripts/gen_errors_doc.py"
    for reason in REASONS:
        assert f"| `{reason.name}` |" in generator.render()


def test_every_reason_raised_is_catalogued_once_and_every_entry_is_raised() -> None:
    names = [r.name for r in REASONS]
    assert len(names) == len(set(names)), "a reason is catalogued twice"
    raised = _raised_reasons() - CLI_ONLY
    assert raised - set(names) == set(), "reasons raised but not in errors.REASONS"
    assert set(names) - raised == set(), "catalogued reasons nothing raises"
    for reason in REASONS:
        assert issubclass(reason.error, Medsam2Error)
        assert reason.name in {reason.error.reason} | raised


def test_retry_info_only_where_a_retry_can_help() -> None:
    for reason in REASONS:
        error = reason.error("x", reason=reason.name)
        status = rich_status(status_for(error), "x", error)
        kinds = {d.TypeName() for d in status.details}
        has_retry = "google.rpc.RetryInfo" in kinds
        code = status_for(error)
        if code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE):
            assert has_retry == reason.retry, reason.name
        else:
            assert not has_retry, reason.name
        info = error_details_pb2.ErrorInfo()
        status.details[0].Unpack(info)
        assert info.reason == reason.name
    assert not REASON_BY_NAME["STUDY_TOO_LARGE"].retry
    permanent = CapacityExceeded("too large", reason="STUDY_TOO_LARGE")
    status = rich_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "too large", permanent)
    assert [d.TypeName() for d in status.details] == ["google.rpc.ErrorInfo"]


def test_the_client_command_maps_reasons_to_exit_codes_and_messages() -> None:
    from medsam2.api.client import ServiceError
    from medsam2.cli.client_cmd import _client_error
    from medsam2.cli.exit_codes import exit_code_for

    busy = _client_error(ServiceError(grpc.StatusCode.ABORTED, "Propagate holds it", reason="SESSION_BUSY"))
    assert exit_code_for(busy) == 11 and "SESSION_BUSY" in str(busy)
    no_prompts = ServiceError(grpc.StatusCode.FAILED_PRECONDITION, "no prompts yet", reason="NO_PROMPTS")
    assert exit_code_for(_client_error(no_prompts)) == 10  # not "invalid input": the request was fine
    bad = _client_error(
        ServiceError(grpc.StatusCode.INVALID_ARGUMENT, "box is empty", reason="INVALID_PROMPT", field="box")
    )
    assert exit_code_for(bad) == 2 and "INVALID_PROMPT (field box): box is empty" in str(bad)
    full = _client_error(
        ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED, "full", reason="SERVICE_FULL", retry_after_s=5.0)
    )
    assert exit_code_for(full) == 8 and str(full).endswith("retry in 5 s") and full.retry_after_s == 5.0
    dropped = _client_error(ServiceError(grpc.StatusCode.UNAVAILABLE, "connection refused"))
    assert exit_code_for(dropped) == 6  # no reason (the link dropped): the status code decides
