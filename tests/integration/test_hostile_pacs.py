"""A hostile PACS cannot make `medsam2 serve` take gigabytes or minutes, nor open the wrong patient's images.

One `medsam2 serve` child process talks to the hostile DICOMweb server of
``hostile_pacs.py`` (loopback only).  For each way a PACS can misbehave the
client gets a clear status (never INTERNAL) within the endpoint's deadline plus
a margin, and the server's peak RSS (VmHWM, reset through ``clear_refs`` before
each case) grows by less than 1.5x the study's voxel bytes + 100 MB.  While a
trickling PACS holds fetches, another principal's upload and health are served.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hostile_pacs import HostilePacs, HostileStudy, study_from_folder, wait_until
from medsam2.api.client import Client
from medsam2.api.pb.medsam2.v1 import segmentation_pb2 as pb
from medsam2.testing.synthetic_ct import write_synthetic_ct
from rpc_errors import rpc_failure, rpc_reason
from serve_process import ServeProcess

DEADLINE_S = 8.0
"""fetch_deadline_s of the endpoint the cases use."""
SLOW_DEADLINE_S = 20.0
"""fetch_deadline_s of the endpoint the trickle-while-others-work test uses (room for the others' calls)."""
MARGIN_S = 20.0
"""What a case may take past its endpoint's deadline: a 5x slower machine under load still answers in it."""
RPC_TIMEOUT_S = 120.0
"""The client's own deadline: never what a case measures (each ends within its endpoint's deadline)."""
MODES = (
    "honest",
    "endless",
    "deflate_bomb",
    "size_lie",
    "endless_paging",
    "wrong_study",
    "mixed_size",
    "trickle",
    "wrong_content_type",
    "broken_off",
)
EXPECTED = {
    "honest": (grpc.StatusCode.OK, ""),
    "endless": (grpc.StatusCode.RESOURCE_EXHAUSTED, "PACS_BUDGET_EXCEEDED"),
    "deflate_bomb": (grpc.StatusCode.RESOURCE_EXHAUSTED, "PACS_BUDGET_EXCEEDED"),
    "size_lie": (grpc.StatusCode.FAILED_PRECONDITION, "PACS_INCONSISTENT_SERIES"),
    "endless_paging": (grpc.StatusCode.RESOURCE_EXHAUSTED, "PACS_TOO_MANY_PAGES"),
    "wrong_study": (grpc.StatusCode.FAILED_PRECONDITION, "PACS_WRONG_STUDY"),
    "mixed_size": (grpc.StatusCode.FAILED_PRECONDITION, "PACS_INCONSISTENT_SERIES"),
    "trickle": (grpc.StatusCode.DEADLINE_EXCEEDED, "PACS_DEADLINE_EXCEEDED"),
    "wrong_content_type": (grpc.StatusCode.FAILED_PRECONDITION, "PACS_BAD_RESPONSE"),
    "broken_off": (grpc.StatusCode.UNAVAILABLE, "PACS_TRANSFER_BROKEN"),
}
MEASURED: dict[str, dict] = {}


def _status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {key} in /proc/{pid}/status")


def _reset_peak(pid: int) -> None:
    """Reset VmHWM to the current RSS (Linux's clear_refs value 5)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("hostile")
    with HostilePacs() as server:
        for seed, mode in enumerate(MODES):
            write_synthetic_ct(folder / mode, slices=4, size=64, seed=seed)
            server.add(study_from_folder(folder / mode, mode))
        write_synthetic_ct(folder / "second", slices=4, size=64, seed=99)
        server.add(study_from_folder(folder / "second", "honest"))
        yield server


def _study(pacs: HostilePacs, mode: str, nth: int = 0) -> HostileStudy:
    return [s for s in pacs.studies.values() if s.mode == mode][nth]


@pytest.fixture(scope="module")
def serve(graphs: dict[str, Path], pacs: HostilePacs, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("serve")
    tokens = folder / "tokens"
    tokens.write_text("alice:alice-secret\nbob:bob-secret\n")
    env = {
        "MEDSAM2_AUTH_TOKENS_FILE": str(tokens),
        "MEDSAM2_PACS_HOSTILE_URL": pacs.url,
        "MEDSAM2_PACS_HOSTILE_TIMEOUT_S": "5",
        "MEDSAM2_PACS_HOSTILE_FETCH_DEADLINE_S": str(DEADLINE_S),
        "MEDSAM2_PACS_HOSTILE_QIDO_PAGE_SIZE": "10",
        "MEDSAM2_PACS_HOSTILE_MAX_QIDO_PAGES": "5",
        "MEDSAM2_PACS_SLOW_URL": pacs.url,
        "MEDSAM2_PACS_SLOW_FETCH_DEADLINE_S": str(SLOW_DEADLINE_S),
        # One upload slot in all: a PACS fetch that took one would show at once.
        "MEDSAM2_MAX_CONCURRENT_UPLOADS": "1",
        "MEDSAM2_MAX_CONCURRENT_PACS_FETCHES": "4",
        "MEDSAM2_MAX_PACS_FETCHES_PER_PRINCIPAL": "2",
    }
    with ServeProcess(graphs["present"], log=folder / "serve.log", env=env) as process:
        # One honest fetch first: the first request's one-time costs are not any case's.
        client = _client(process, "alice")
        try:
            client.close_session(_open(client, "hostile", _study(pacs, "honest", 1).study_uid).session_id)
        finally:
            client.close()
        yield process


def _client(serve: ServeProcess, who: str) -> Client:
    return Client(serve.target, token=f"{who}-secret")


def _open(client: Client, endpoint: str, study_uid: str, timeout: float = RPC_TIMEOUT_S) -> pb.Session:
    header = pb.StudyHeader(pacs=pb.PacsReference(endpoint=endpoint, study_uid=study_uid))
    return client.stub.CreateSession(
        iter([pb.CreateSessionRequest(header=header)]), metadata=client.metadata, timeout=timeout
    )


@pytest.mark.parametrize("mode", MODES)
def test_a_hostile_pacs_gets_a_clear_status_in_time_and_bounded_memory(
    serve: ServeProcess, pacs: HostilePacs, mode: str
) -> None:
    study = _study(pacs, mode)
    client = _client(serve, "alice")
    pid = serve.process.pid
    try:
        before = _status(pid, "VmRSS")
        _reset_peak(pid)
        started = time.monotonic()
        code, reason, details = grpc.StatusCode.OK, "", ""
        try:
            session = _open(client, "hostile", study.study_uid)
        except grpc.RpcError as error:
            code, reason, details = error.code(), rpc_reason(error), error.details()
        elapsed = time.monotonic() - started
        growth = _status(pid, "VmHWM") - before
        if code is grpc.StatusCode.OK:
            assert list(session.shape) == [4, 64, 64] and session.study_uid == study.study_uid
            client.close_session(session.session_id)
        after = _status(pid, "VmRSS") - before
        MEASURED[mode] = {
            "status": code.name,
            "reason": reason,
            "seconds": round(elapsed, 2),
            "peak_rss_growth_mb": round(growth / 2**20, 1),
            "rss_after_mb": round(after / 2**20, 1),
        }
        print(json.dumps({mode: MEASURED[mode]}))
        assert (code, reason) == EXPECTED[mode], details
        assert code is not grpc.StatusCode.INTERNAL
        assert "PACS hostile" in details or code is grpc.StatusCode.OK
        assert pacs.url not in details  # clients learn the endpoint's name, never its address
        assert elapsed < DEADLINE_S + MARGIN_S
        assert growth < 1.5 * study.voxel_bytes + 100 * 2**20, f"peak RSS grew by {growth / 2**20:.0f} MB"
        assert after < 50 * 2**20, f"RSS stayed {after / 2**20:.0f} MB above where it was"
    finally:
        client.close()


def test_the_log_names_the_failed_check_and_no_patient_data(serve: ServeProcess, pacs: HostilePacs) -> None:
    study = _study(pacs, "wrong_study")
    client = _client(serve, "alice")
    try:
        error = rpc_failure(lambda: _open(client, "hostile", study.study_uid))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and rpc_reason(error) == "PACS_WRONG_STUDY"
        assert "another study" in error.details()
    finally:
        client.close()
    wait_until(lambda: "PACS_WRONG_STUDY" in serve.log.read_text(errors="replace"), 10, "the log line")
    log = serve.log.read_text(errors="replace")
    assert study.extra["patient_id"] not in log and study.extra["patient_id"] not in error.details()


def test_a_uid_that_is_not_a_dicom_uid_is_refused_before_any_request(serve: ServeProcess, pacs: HostilePacs) -> None:
    client = _client(serve, "alice")
    try:
        for bad in ("1.2.3/../../series", "1.2.3?limit=1", "x" * 65, "1..2"):
            seen = len(pacs.requests)
            error = rpc_failure(lambda bad=bad: _open(client, "hostile", bad))
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and rpc_reason(error) == "INVALID_UID"
            assert "is not a DICOM UID" in error.details()
            assert len(pacs.requests) == seen, "a request reached the PACS"
    finally:
        client.close()


def test_a_trickling_pacs_delays_only_its_own_fetches(serve: ServeProcess, pacs: HostilePacs) -> None:
    trickle, honest = _study(pacs, "trickle"), _study(pacs, "honest", 1)
    retrieve = f"/dicom-web/studies/{trickle.study_uid}/series/{trickle.series_uid}"
    outcomes: dict[str, tuple[grpc.StatusCode, str, float]] = {}

    def fetch(name: str, timeout: float) -> None:
        client = _client(serve, "alice")
        started = time.monotonic()
        try:
            _open(client, "slow", trickle.study_uid, timeout=timeout)
            outcomes[name] = (grpc.StatusCode.OK, "", time.monotonic() - started)
        except grpc.RpcError as error:
            reason = rpc_reason(error) if error.code() != grpc.StatusCode.DEADLINE_EXCEEDED or name == "stays" else ""
            outcomes[name] = (error.code(), reason, time.monotonic() - started)
        finally:
            client.close()

    seen = sum(path == retrieve for path in pacs.requests)
    leaves = threading.Thread(target=fetch, args=("leaves", 3.0), daemon=True)
    stays = threading.Thread(target=fetch, args=("stays", RPC_TIMEOUT_S), daemon=True)
    alice, bob = _client(serve, "alice"), _client(serve, "bob")
    try:
        started = time.monotonic()
        # One after the other: each reads its header in the only upload slot, then leaves it for a PACS slot.
        for n, thread in enumerate((leaves, stays), 1):
            thread.start()
            wait_until(lambda n=n: sum(p == retrieve for p in pacs.requests) - seen >= n, 60, f"fetch {n}")
        assert not outcomes, outcomes
        # alice's third fetch is refused at once: her two PACS slots are taken ...
        error = rpc_failure(lambda: _open(alice, "hostile", honest.study_uid))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and rpc_reason(error) == "PACS_FETCHES_FULL"
        # ... while bob's upload (in the only upload slot) and health are served.
        frames = np.random.default_rng(3).integers(0, 255, (3, 48, 56), dtype=np.uint8)
        session = bob.create_session(frames, preset="none")
        assert list(session.shape) == [3, 48, 56]
        bob.close_session(session.session_id)
        with grpc.insecure_channel(serve.target) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert stays.is_alive(), "the trickle ended before the others were served"
        # The client that left frees its PACS slot: alice's next fetch is admitted while the other still trickles.
        leaves.join(RPC_TIMEOUT_S)
        assert outcomes["leaves"][0] == grpc.StatusCode.DEADLINE_EXCEEDED
        opened = None
        give_up = time.monotonic() + 30
        while opened is None:
            try:
                opened = _open(alice, "hostile", honest.study_uid)
            except grpc.RpcError as refused:
                if rpc_reason(refused) != "PACS_FETCHES_FULL" or time.monotonic() > give_up:
                    raise
                time.sleep(0.2)
        assert opened.study_uid == honest.study_uid
        assert stays.is_alive(), "the slot was freed only when the trickle ended"
        alice.close_session(opened.session_id)
        stays.join(SLOW_DEADLINE_S + MARGIN_S)
        code, reason, elapsed = outcomes["stays"]
        assert (code, reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, "PACS_DEADLINE_EXCEEDED")
        assert elapsed < SLOW_DEADLINE_S + MARGIN_S and time.monotonic() - started < SLOW_DEADLINE_S + 2 * MARGIN_S
    finally:
        alice.close()
        bob.close()
