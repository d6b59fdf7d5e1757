"""Model versions in the service: the newest loads at start, a switch keeps open sessions on their version."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

import patience
from medsam2.api.client import Client
from medsam2.api.pb.medsam2.v1 import segmentation_pb2 as pb
from medsam2.backends.onnxruntime_backend import OnnxRuntimeBackend
from medsam2.cli.main import main
from medsam2.engine.prompts import Box
from medsam2.engine.protocols import ObjectPrompt, segment_volume
from medsam2.engine.tracker import Tracker
from medsam2.errors import NotFound
from medsam2.graphs import GRAPHS
from medsam2.models.versions import choose_version
from medsam2.server.app import make_backend, start_server
from medsam2.server.config import ServerSettings
from medsam2.server.versions import VersionedBackends
from medsam2_export import model_repository
from medsam2_export.parity import synthetic_volume
from redis_server import RedisServer, unavailable_reason
from rpc_errors import rpc_failure, rpc_reason, status_json

SLICES, ROWS, COLS = 5, 40, 48


def reference_mask(graphs: Path, frames: np.ndarray, box: Box) -> np.ndarray:
    """Object 1's mask from a box on slice 2, by the engine directly on ``graphs``: what a version must give."""
    return segment_volume(Tracker(OnnxRuntimeBackend(graphs, threads=2), frames), [ObjectPrompt(1, 2, box=box)])[1]


def _add_version(repo: Path, graphs: Path, version: int) -> None:
    model_repository.write_model_repository(
        repo, "onnxruntime", {s: graphs / f"{s.value}.onnx" for s in GRAPHS}, version=version
    )


def _segment(client: Client, session_id: str, box) -> np.ndarray:
    client.add_box(session_id, 1, 2, (box.x0, box.y0, box.x1, box.y1))
    list(client.propagate(session_id))
    labels, _ = client.result_labels(session_id)
    return labels > 0


def test_a_switch_keeps_open_sessions_on_their_version(graphs, tmp_path: Path) -> None:
    frames, boxes = synthetic_volume(seed=3, slices=SLICES, height=ROWS, width=COLS)
    expected = {name: reference_mask(graphs[name], frames, boxes[0]) for name in ("present", "absent")}
    assert not np.array_equal(expected["present"], expected["absent"])  # the two versions are told apart
    repo = tmp_path / "repo"
    _add_version(repo, graphs["present"], 1)
    settings = ServerSettings(port=0, metrics_port=0, model_repository=repo)
    backend = make_backend(settings, 2)
    assert isinstance(backend, VersionedBackends) and backend.current_version == 1
    running = start_server(settings, backend, metrics_server=False)
    client = Client(f"127.0.0.1:{running.port}")
    try:
        old = client.create_session(frames, preset="none")
        _add_version(repo, graphs["absent"], 2)
        assert backend.switch() == 2  # what SIGHUP does
        new = client.create_session(frames, preset="none")
        versions = {e.session_id: e.model_version for e in running.registry.list()}
        assert versions == {old.session_id: 1, new.session_id: 2}
        # The old session started before the switch, is prompted after it, and still runs version 1.
        np.testing.assert_array_equal(_segment(client, old.session_id, boxes[0]), expected["present"])
        np.testing.assert_array_equal(_segment(client, new.session_id, boxes[0]), expected["absent"])
        assert backend.loaded() == {1: 1, 2: 1}
        assert client.close_session(old.session_id)
        assert backend.loaded() == {2: 1}  # version 1 unloads with its last session
        assert backend.provenance(2) is not None and backend.provenance(2).version == 2
    finally:
        client.close()
        running.stop(1)


def test_choose_version_names_what_exists(graphs, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    _add_version(repo, graphs["present"], 1)
    _add_version(repo, graphs["present"], 3)
    assert choose_version(repo)[0] == 3 and choose_version(repo, 1)[0] == 1
    with pytest.raises(NotFound, match="model version 2 is not in .* it has 1, 3"):
        choose_version(repo, 2)
    assert choose_version(graphs["present"]) == (None, None)  # a flat folder of graphs


def test_sighup_switches_a_running_medsam2_serve(graphs, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    _add_version(repo, graphs["present"], 1)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "medsam2.cli.main",
            "--log-level",
            "INFO",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--metrics-port",
            "0",
            "--model-repository",
            str(repo),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        lines = _read_until(proc, "listening on")
        assert any("model version 1 is current" in line for line in lines)
        _add_version(repo, graphs["absent"], 2)
        proc.send_signal(signal.SIGHUP)
        _read_until(proc, "model version 2 is current (was 1)")
    finally:
        proc.terminate()
        proc.wait(30)


def _read_until(proc: subprocess.Popen, text: str, timeout_s: float = patience.SERVER_START_S) -> list[str]:
    lines, deadline = [], time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"server exited before {text!r}: {''.join(lines)}")
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"no {text!r} within {timeout_s} s: {''.join(lines)}")


def test_model_version_pins_the_start_version(graphs, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    _add_version(repo, graphs["present"], 1)
    _add_version(repo, graphs["absent"], 2)
    pinned = make_backend(ServerSettings(model_repository=repo, model_version=1), 1)
    try:
        assert isinstance(pinned, VersionedBackends) and pinned.current_version == 1
    finally:
        pinned.close()
    with pytest.raises(NotFound, match=r"model version 3 is not in .*: it has 1, 2"):
        make_backend(ServerSettings(model_repository=repo, model_version=3), 1)
    openvino = make_backend(ServerSettings(model_repository=repo, backend="openvino", precision="fp32"), 1)
    try:  # OpenVINO serves numbered versions too
        assert isinstance(openvino, VersionedBackends) and openvino.current_version == 2
        assert openvino.name == "openvino"
    finally:
        openvino.close()
    with pytest.raises(NotFound, match="flat folder of graphs without versions; version 2 does not exist"):
        make_backend(ServerSettings(model_repository=graphs["present"], model_version=2), 1)


def test_serve_refuses_a_missing_model_version_at_start(graphs, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    _add_version(repo, graphs["present"], 1)
    _add_version(repo, graphs["present"], 2)
    env = dict(os.environ, MEDSAM2_MODEL_VERSION="5")
    command = [sys.executable, "-m", "medsam2.cli.main", "serve", "--port", "0", "--metrics-port", "0"]
    done = subprocess.run(
        [*command, "--model-repository", str(repo)], capture_output=True, text=True, env=env, timeout=patience.COMMAND_S
    )
    assert done.returncode == 3, done.stderr  # NotFound
    assert re.search(r"model version 5 is not in .*: it has 1, 2", done.stderr), done.stderr
    assert "Traceback" not in done.stderr
    done = subprocess.run(
        [*command, "--model-repository", str(repo), "--model-version", "x"],
        capture_output=True,
        text=True,
        timeout=patience.COMMAND_S,
    )
    assert done.returncode == 2 and "model_version (MEDSAM2_MODEL_VERSION) must be an integer" in done.stderr


ADMIN, USER = "ops-admin", "reader"


def test_set_model_version_is_for_admins_and_keeps_sessions(graphs, tmp_path: Path, capsys) -> None:
    frames, boxes = synthetic_volume(seed=3, slices=SLICES, height=ROWS, width=COLS)
    expected = reference_mask(graphs["present"], frames, boxes[0])
    repo = tmp_path / "repo"
    _add_version(repo, graphs["present"], 1)
    tokens, audit_log = tmp_path / "tokens", tmp_path / "audit.jsonl"
    tokens.write_text(f"{ADMIN}:admin-secret\n{USER}:reader-secret\n")
    settings = ServerSettings(
        port=0,
        metrics_port=0,
        model_repository=repo,
        auth_tokens=tokens,
        audit_log=audit_log,
        admin_principals=f" {ADMIN} ;CN=ops,O=Example ",
        http_port=_free_port(),
    )
    backend = make_backend(settings, 2)
    running = start_server(settings, backend, metrics_server=False)
    target = f"127.0.0.1:{running.port}"
    admin, user = Client(target, token="admin-secret"), Client(target, token="reader-secret")
    try:
        info = user.server_info()
        assert info.model.version == 1 and list(info.model_versions) == [1] and "model-versions" in info.capabilities
        old = user.create_session(frames, preset="none")
        assert old.model.version == 1
        _add_version(repo, graphs["absent"], 2)

        with pytest.raises(grpc.RpcError) as denied:
            user.set_model_version(2)
        assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert rpc_reason(denied.value) == "PERMISSION_DENIED" and "'reader' is not one" in denied.value.details()
        status, body = _post_json(running.http_port, "SetModelVersion", {"version": 2}, "reader-secret")
        assert status == 403, body
        assert backend.current_version == 1  # nothing switched

        with pytest.raises(grpc.RpcError) as missing:
            admin.set_model_version(7)
        assert missing.value.code() is grpc.StatusCode.NOT_FOUND
        assert rpc_reason(missing.value) == "MODEL_VERSION_NOT_FOUND"
        assert re.search(r"model version 7 is not in .*: it has 1, 2", missing.value.details())

        info = admin.set_model_version(0)  # the newest
        assert info.model.version == 2 and list(info.model_versions) == [1, 2]
        new = user.create_session(frames, preset="none")
        assert new.model.version == 2
        # The old session, prompted and propagated after the switch, still runs version 1 and says so.
        np.testing.assert_array_equal(_segment(user, old.session_id, boxes[0]), expected)
        assert user.get_session(old.session_id).model.version == 1
        assert backend.loaded() == {1: 1, 2: 1}

        # Roll back over the gateway: the same RPC, the same admin check.
        status, body = _post_json(running.http_port, "SetModelVersion", {"version": 1}, "admin-secret")
        assert status == 200 and body["model"]["version"] == 1, body
        assert user.create_session(frames, preset="none").model.version == 1
        assert user.get_session(new.session_id).model.version == 2

        # `medsam2 versions`: the same RPC from the command line, with its exit codes.
        command = ["versions", "--server", target, "--json"]
        assert main([*command, "--token", "reader-secret", "--switch", "2"]) == 9  # not an admin
        assert main([*command, "--token", "admin-secret", "--switch", "2.5"]) == 2  # refused before any call
        capsys.readouterr()
        assert main([*command, "--token", "admin-secret", "--switch", "newest"]) == 0
        switched = json.loads(capsys.readouterr().out)
        assert (switched["current"], switched["versions"], switched["switched"]) == (2, [1, 2], True)
        assert main([*command, "--token", "reader-secret"]) == 0  # anyone may look
        assert json.loads(capsys.readouterr().out)["current"] == 2
    finally:
        admin.close()
        user.close()
        running.stop(1)
    lines = [json.loads(line) for line in audit_log.read_text().splitlines()]
    switches = [x for x in lines if x.get("event") == "model_version_switched"]
    assert [(x["principal"], x["previous_model_version"], x["model_version"]) for x in switches] == [
        (ADMIN, 1, 2),
        (ADMIN, 2, 1),
        (ADMIN, 1, 2),
    ]
    refused = [x for x in lines if x.get("rpc") == "SetModelVersion"]
    assert {(x["principal"], x["outcome"]) for x in refused} == {
        (USER, "PERMISSION_DENIED"),
        (ADMIN, "NOT_FOUND"),
        (ADMIN, "OK"),
    }


def test_set_model_version_without_numbered_versions(graphs) -> None:
    settings = ServerSettings(port=0, metrics_port=0, model_repository=graphs["present"], admin_principals="anonymous")
    running = start_server(settings, make_backend(settings, 1), metrics_server=False)
    client = Client(f"127.0.0.1:{running.port}")
    try:
        with pytest.raises(grpc.RpcError) as refused:
            client.set_model_version(2)
        assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert "serves one unversioned model" in refused.value.details()
    finally:
        client.close()
        running.stop(1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post_json(port: int, method: str, payload: dict, token: str | None) -> tuple[int, dict]:
    """POST one REST call (with ``token`` as its bearer token, unless None); its HTTP status and JSON body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
    try:
        connection.request("POST", f"/v1/{method}", body=json.dumps(payload), headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


@pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason()))
def test_a_rebuilt_session_keeps_its_version(graphs, tmp_path: Path) -> None:
    """Replica B, serving version 2, rebuilds a session that replica A opened on version 1: on version 1."""
    frames, boxes = synthetic_volume(seed=3, slices=SLICES, height=ROWS, width=COLS)
    expected = reference_mask(graphs["present"], frames, boxes[0])
    repo = tmp_path / "repo"
    _add_version(repo, graphs["present"], 1)
    _add_version(repo, graphs["absent"], 2)
    redis = RedisServer(tmp_path / "redis", password="versions-pw").start()
    replicas = []
    try:
        for version in (1, 2):
            settings = ServerSettings(
                port=0, metrics_port=0, model_repository=repo, model_version=version, session_store=redis.url
            )
            replicas.append(start_server(settings, make_backend(settings, 2), metrics_server=False))
        a, b = (Client(f"127.0.0.1:{r.port}") for r in replicas)
        session = a.create_session(frames, preset="none")
        assert session.model.version == 1 and session.durable
        np.testing.assert_array_equal(_segment(a, session.session_id, boxes[0]), expected)
        rebuilt = b.get_session(session.session_id)  # B does not hold it: rebuilt from the store
        assert rebuilt.model.version == 1
        labels, _ = b.result_labels(session.session_id)
        np.testing.assert_array_equal(labels > 0, expected)
        assert replicas[1].backend.loaded() == {1: 1, 2: 0}  # version 1 loaded for that session only
        assert b.close_session(session.session_id)
        assert replicas[1].backend.loaded() == {2: 0}
        a.close()
        b.close()
    finally:
        for running in replicas:
            running.stop(1)
        redis.stop()


@pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason()))
def test_a_replica_without_the_session_s_version_refuses_it_on_both_transports(graphs, tmp_path: Path) -> None:
    """Replica B's repository lacks version 1, on which replica A opened a session: B cannot rebuild it and says
    MODEL_VERSION_UNAVAILABLE, over gRPC and over REST with the same google.rpc details (the catalogue walk,
    test_error_reasons.py, points here for this reason)."""
    frames, _ = synthetic_volume(seed=3, slices=SLICES, height=ROWS, width=COLS)
    repos = {1: tmp_path / "repo-a", 2: tmp_path / "repo-b"}
    for version, repo in repos.items():
        _add_version(repo, graphs["present"], version)
    redis = RedisServer(tmp_path / "redis", password="versions-pw").start()
    replicas = []
    try:
        for repo in repos.values():
            settings = ServerSettings(
                port=0, metrics_port=0, http_port=_free_port(), model_repository=repo, session_store=redis.url
            )
            replicas.append(start_server(settings, make_backend(settings, 1), metrics_server=False))
        a, b = (Client(f"127.0.0.1:{r.port}") for r in replicas)
        session = a.create_session(frames, preset="none")
        assert session.model.version == 1 and session.durable
        request = pb.GetSessionRequest(session_id=session.session_id)
        error = rpc_failure(lambda: b.stub.GetSession(request, metadata=b.metadata))
        assert error.code() is grpc.StatusCode.FAILED_PRECONDITION, error
        assert rpc_reason(error) == "MODEL_VERSION_UNAVAILABLE"
        assert "opened on model version 1, which this replica cannot load" in error.details()
        status, message, details = status_json(error)
        assert [d["@type"].rsplit(".", 1)[1] for d in details] == ["ErrorInfo"]  # permanent: no RetryInfo
        assert details[0]["domain"] == "medsam2"
        http_status, body = _post_json(replicas[1].http_port, "GetSession", {"sessionId": session.session_id}, None)
        assert http_status == 400
        assert body == {"error": {"code": 400, "status": status, "message": message, "details": details}}
        assert replicas[1].backend.loaded() == {2: 0}  # nothing of version 1 was loaded, nor left held
        assert a.get_session(session.session_id).model.version == 1  # A still serves it
        a.close()
        b.close()
    finally:
        for running in replicas:
            running.stop(1)
        redis.stop()
