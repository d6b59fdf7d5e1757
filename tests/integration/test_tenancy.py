"""Many tenants: principals from a tokens file or client certificates, private sessions, quotas, audit log."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import grpc
import numpy as np
import pytest

from medsam2.api.client import Client
from medsam2.api.pb.medsam2.v1 import segmentation_pb2 as pb
from medsam2.api.pb.medsam2.v1 import segmentation_pb2_grpc as pb_grpc
from medsam2.backends.onnxruntime_backend import OnnxRuntimeBackend
from medsam2.errors import ConfigError
from medsam2.server.app import start_server
from medsam2.server.auth import Authenticator, certificate_subject, reload_on_sighup
from medsam2.server.config import ServerSettings
from medsam2_export.parity import synthetic_volume
from pki import make_certificates, needs_openssl
from rpc_errors import rpc_failure, rpc_reason

LABEL = "Doe^Jane 1.2.840.99 CT-abdomen.nii.gz"


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return synthetic_volume(seed=5, slices=3, height=32, width=40)[0]


@pytest.fixture(scope="module")
def tenants(graphs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("tenants")
    tokens = folder / "tokens"
    tokens.write_text("# principal:token\nalice:alice-secret\nbob:bob-secret\n\ncarol:carol-secret\n")
    audit_log = folder / "audit.jsonl"
    settings = ServerSettings(
        port=0,
        metrics_port=0,
        model_repository=graphs["present"],
        auth_tokens=tokens,
        audit_log=audit_log,
        max_sessions=4,
        max_sessions_per_principal=2,
    )
    running = start_server(settings, OnnxRuntimeBackend(graphs["present"], threads=1))
    target = f"127.0.0.1:{running.port}"
    clients = {name: Client(target, token=f"{name}-secret") for name in ("alice", "bob", "carol")}
    yield running, clients, tokens, audit_log
    for c in clients.values():
        c.close()
    running.stop(1)


def _close_all(clients: dict[str, Client]) -> None:
    for c in clients.values():
        for s in c.stub.ListSessions(pb.ListSessionsRequest(), metadata=c.metadata).sessions:
            c.close_session(s.session_id)


def test_another_principal_sees_nothing(tenants, frames: np.ndarray) -> None:
    _, clients, _, _ = tenants
    alice, bob = clients["alice"], clients["bob"]
    _close_all(clients)
    sid = alice.create_session(frames, preset="none", label=LABEL, keep_image=True).session_id
    alice.add_box(sid, 1, 1, (4, 4, 20, 20))
    md = bob.metadata
    calls = {
        "GetSession": lambda: bob.stub.GetSession(pb.GetSessionRequest(session_id=sid), metadata=md),
        "AddPrompt": lambda: bob.add_box(sid, 1, 1, (4, 4, 20, 20)),
        "Propagate": lambda: bob.propagate(sid),
        "GetResult": lambda: bob.stub.GetResult(pb.GetResultRequest(session_id=sid), metadata=md),
        "GetImage": lambda: bob.stub.GetImage(pb.GetImageRequest(session_id=sid), metadata=md),
        "ResetObjects": lambda: bob.stub.ResetObjects(pb.ResetObjectsRequest(session_id=sid, all=True), metadata=md),
    }
    unknown = rpc_failure(lambda: bob.stub.GetSession(pb.GetSessionRequest(session_id="f" * 32), metadata=md))
    for name, call in calls.items():
        error = rpc_failure(call)
        assert error.code() == grpc.StatusCode.NOT_FOUND, name
        # Indistinguishable from an id that never existed.
        assert error.details() == unknown.details().replace("f" * 32, sid), name
        assert rpc_reason(error) == "SESSION_NOT_FOUND", name
    assert bob.close_session(sid) is False
    assert list(bob.stub.ListSessions(pb.ListSessionsRequest(), metadata=md).sessions) == []
    mine = alice.stub.ListSessions(pb.ListSessionsRequest(), metadata=alice.metadata).sessions
    assert [s.session_id for s in mine] == [sid] and mine[0].object_ids == [1]  # bob's reset changed nothing
    alice.close_session(sid)


def test_quota_evicts_only_your_own_sessions(tenants, frames: np.ndarray) -> None:
    _, clients, _, _ = tenants
    alice, bob = clients["alice"], clients["bob"]
    _close_all(clients)
    kept = alice.create_session(frames, preset="none").session_id
    bobs = [bob.create_session(frames, preset="none").session_id for _ in range(3)]  # bob's quota is 2
    error = rpc_failure(lambda: bob.stub.GetSession(pb.GetSessionRequest(session_id=bobs[0]), metadata=bob.metadata))
    assert error.code() == grpc.StatusCode.NOT_FOUND and rpc_reason(error) == "SESSION_EVICTED"
    assert alice.stub.GetSession(pb.GetSessionRequest(session_id=kept), metadata=alice.metadata).session_id == kept
    _close_all(clients)


def test_a_full_service_evicts_others_visibly(tenants, frames: np.ndarray) -> None:
    _, clients, _, _ = tenants
    alice, bob, carol = clients["alice"], clients["bob"], clients["carol"]
    _close_all(clients)
    oldest = alice.create_session(frames, preset="none").session_id
    alice.create_session(frames, preset="none")
    for _ in range(2):
        bob.create_session(frames, preset="none")
    carol.create_session(frames, preset="none")  # the service (4) is full: the least recently used idle one goes
    error = rpc_failure(lambda: alice.stub.GetSession(pb.GetSessionRequest(session_id=oldest), metadata=alice.metadata))
    assert error.code() == grpc.StatusCode.NOT_FOUND and rpc_reason(error) == "SESSION_EVICTED"
    assert "evicted" in error.details()
    _close_all(clients)


def test_unknown_token_and_sighup_reload(tenants) -> None:
    running, clients, tokens, _ = tenants
    target = f"127.0.0.1:{running.port}"
    dave = Client(target, token="dave-secret")
    try:
        error = rpc_failure(lambda: dave.stub.ListSessions(pb.ListSessionsRequest(), metadata=dave.metadata))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        original = tokens.read_text()
        tokens.write_text(original.replace("bob:bob-secret", "dave:dave-secret"))
        previous = reload_on_sighup(running.auth)
        # The handler that SIGHUP runs, called as the interpreter would: a real signal to the test runner can land
        # in a native thread of another library. Real SIGHUPs to a real `medsam2 serve` are in test_model_versions.
        on_hup = signal.getsignal(signal.SIGHUP)
        try:
            on_hup(signal.SIGHUP, None)
            assert dave.stub.ListSessions(pb.ListSessionsRequest(), metadata=dave.metadata).sessions == []
            bob = clients["bob"]
            error = rpc_failure(lambda: bob.stub.ListSessions(pb.ListSessionsRequest(), metadata=bob.metadata))
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
            tokens.write_text("not a token line\n")  # a broken file keeps the previous tokens
            on_hup(signal.SIGHUP, None)
            assert dave.stub.ListSessions(pb.ListSessionsRequest(), metadata=dave.metadata).sessions == []
        finally:
            signal.signal(signal.SIGHUP, previous)
            tokens.write_text(original)
            running.auth.reload()
    finally:
        dave.close()


def test_audit_log_has_who_what_and_no_patient_data(tenants, frames: np.ndarray) -> None:
    _, clients, _, audit_log = tenants
    alice = clients["alice"]
    sid = alice.create_session(frames, preset="none", label=LABEL).session_id
    rpc_failure(lambda: alice.stub.GetSession(pb.GetSessionRequest(session_id="nope"), metadata=alice.metadata))
    alice.close_session(sid)
    lines = [json.loads(line) for line in audit_log.read_text().splitlines()]
    assert all(set(line) == {"time", "principal", "rpc", "session_id", "outcome", "duration_s"} for line in lines)
    created = [x for x in lines if x["rpc"] == "CreateSession" and x["session_id"] == sid]
    assert created and created[0]["principal"] == "alice" and created[0]["outcome"] == "OK"
    assert any(x["rpc"] == "GetSession" and x["session_id"] == "nope" and x["outcome"] == "NOT_FOUND" for x in lines)
    assert any(x["rpc"] == "CloseSession" and x["session_id"] == sid for x in lines)
    text = audit_log.read_text()
    for secret in ("Doe", "1.2.840.99", "nii.gz", "alice-secret"):
        assert secret not in text


def test_tokens_file_format_and_lookup(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("alice:one\nbob: two \n")
    auth = Authenticator(tokens_file=tokens, token="shared")
    assert auth.principals == ["alice", "bob", "default"]
    assert (auth.principal_for_token("one"), auth.principal_for_token("two"), auth.principal_for_token("shared")) == (
        "alice",
        "bob",
        "default",
    )
    assert auth.principal_for_token("on") is None and auth.principal_for_token("") is None
    tokens.write_text("alice:one\nbob-without-token\n")
    with pytest.raises(ConfigError, match=r"tokens:2: expected 'principal:token'"):
        Authenticator(tokens_file=tokens)
    with pytest.raises(ConfigError, match="cannot read the tokens file"):
        Authenticator(tokens_file=tmp_path / "missing")
    assert certificate_subject({"x509_common_name": [b"ws-7"]}) == "CN=ws-7"
    assert certificate_subject({}) == ""


# -- mTLS: the client certificate's subject is the principal ------------------------------------------------------
@needs_openssl
def test_client_certificate_subject_is_the_principal(graphs, frames: np.ndarray, tmp_path: Path) -> None:
    make_certificates(tmp_path, clients=["ws-alice", "ws-bob"])
    settings = ServerSettings(
        port=0,
        metrics_port=0,
        model_repository=graphs["present"],
        tls_cert=tmp_path / "server.pem",
        tls_key=tmp_path / "server.key",
        tls_client_ca=tmp_path / "ca.pem",
    )
    running = start_server(settings, OnnxRuntimeBackend(graphs["present"], threads=1))

    def stub(name: str) -> tuple[grpc.Channel, pb_grpc.SegmentationServiceStub]:
        creds = grpc.ssl_channel_credentials(
            (tmp_path / "ca.pem").read_bytes(),
            (tmp_path / f"{name}.key").read_bytes(),
            (tmp_path / f"{name}.pem").read_bytes(),
        )
        channel = grpc.secure_channel(f"localhost:{running.port}", creds)
        return channel, pb_grpc.SegmentationServiceStub(channel)

    try:
        (ca, alice), (cb, bob) = stub("ws-alice"), stub("ws-bob")
        header = pb.StudyHeader(
            shape=list(frames.shape), dtype=pb.DATA_TYPE_UINT8, preprocessing=pb.Preprocessing(preset="none")
        )
        session = alice.CreateSession(
            iter([pb.CreateSessionRequest(header=header), pb.CreateSessionRequest(voxels=frames.tobytes())]), timeout=30
        )
        assert [s.session_id for s in alice.ListSessions(pb.ListSessionsRequest()).sessions] == [session.session_id]
        assert list(bob.ListSessions(pb.ListSessionsRequest()).sessions) == []
        error = rpc_failure(lambda: bob.GetSession(pb.GetSessionRequest(session_id=session.session_id)))
        assert error.code() == grpc.StatusCode.NOT_FOUND
        ca.close()
        cb.close()
    finally:
        running.stop(1)


def test_a_late_unbind_keeps_another_rpcs_caller() -> None:
    from medsam2.server import auth

    abandoned = auth.bind("alice", "Propagate")
    current = auth.bind("bob", "GetSession")  # the same thread now serves bob
    auth.unbind(abandoned)  # alice's stream is finalised late
    assert auth.current_principal() == "bob"
    auth.unbind(current)
    assert auth.current_principal() is None
