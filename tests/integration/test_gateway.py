"""The HTTP gateway over a real server (embedded ONNX Runtime, the real graphs): routes, streams, auth, errors."""

from __future__ import annotations

import http.client
import json
import socket
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from medsam2.api.client import Client
from medsam2.api.pb.medsam2.v1 import segmentation_pb2 as pb
from medsam2.backends.onnxruntime_backend import OnnxRuntimeBackend
from medsam2.server import metrics
from medsam2.server.app import start_server
from medsam2.server.config import ServerSettings
from medsam2_export.parity import synthetic_volume
from pki import make_certificates, needs_openssl

SLICES, ROWS, COLS = 6, 48, 56
TOKEN = "gateway-test-token"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def study() -> tuple[np.ndarray, list]:
    return synthetic_volume(seed=21, slices=SLICES, height=ROWS, width=COLS)


@pytest.fixture(scope="module")
def server(graphs: dict[str, Path]):
    settings = ServerSettings(
        port=0,
        metrics_port=0,
        http_port=_free_port(),
        model_repository=graphs["present"],
        auth_token=TOKEN,
        max_study_voxels=16 * 512 * 512,
    )
    running = start_server(settings, OnnxRuntimeBackend(graphs["present"], threads=2))
    yield running
    running.stop(2)


def _call(
    server,
    method: str,
    path: str,
    body: bytes | str | None = None,
    token: str | None = TOKEN,
    headers: dict | None = None,
) -> tuple[int, dict, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=60)
    sent = {"Content-Type": "application/json", **(headers or {})}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    connection.request(method, path, body=body, headers=sent)
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, dict(response.getheaders()), data


def _post(server, name: str, payload: dict, **kwargs) -> tuple[int, dict]:
    status, _, data = _call(server, "POST", f"/v1/{name}", json.dumps(payload), **kwargs)
    return status, json.loads(data)


def _upload(
    server, voxels: np.ndarray, header: dict | None = None, body: bytes | None = None, token: str | None = TOKEN
) -> tuple[int, dict]:
    header = header or {
        "shape": list(voxels.shape),
        "dtype": "DATA_TYPE_UINT8",
        "spacingMm": [2.0, 0.5, 0.5],
        "preprocessing": {"preset": "none"},
    }
    status, _, data = _call(
        server,
        "POST",
        "/v1/CreateSession",
        voxels.tobytes() if body is None else body,
        token=token,
        headers={"Content-Type": "application/octet-stream", "X-Medsam2-Header": json.dumps(header)},
    )
    return status, json.loads(data)


def _events(data: bytes) -> list[tuple[str, dict]]:
    events = []
    for block in data.decode().strip().split("\n\n"):
        kind, payload = "message", None
        for line in block.splitlines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                payload = json.loads(line.removeprefix("data: "))
        events.append((kind, payload))
    return events


def test_every_rpc_of_the_descriptor_is_a_route_in_the_openapi_document(server) -> None:
    status, headers, data = _call(server, "GET", "/openapi.json", token=None)
    assert status == 200
    document = json.loads(data)
    methods = [m.name for m in pb.DESCRIPTOR.services_by_name["SegmentationService"].methods]
    assert sorted(p.removeprefix("/v1/") for p in document["paths"] if ":" not in p) == sorted(methods)
    assert "/v1/GetResult:download" in document["paths"]
    assert "text/event-stream" in document["paths"]["/v1/Propagate"]["post"]["responses"]["200"]["content"]
    session = document["components"]["schemas"]["medsam2.v1.Session"]["properties"]
    assert session["sessionId"] == {"type": "string"}
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert "unsafe-inline" not in headers["Content-Security-Policy"]


def test_upload_prompt_propagate_and_download_match_grpc(server, study) -> None:
    frames, boxes = study
    status, session = _upload(server, frames)
    assert status == 200, session
    assert session["shape"] == [SLICES, ROWS, COLS] and session["spacingMm"] == [2.0, 0.5, 0.5]
    sid = session["sessionId"]
    box = boxes[0]
    status, result = _post(
        server,
        "AddPrompt",
        {"sessionId": sid, "objectId": 1, "slice": 3, "box": {"x0": box.x0, "y0": box.y0, "x1": box.x1, "y1": box.y1}},
    )
    assert status == 200, result
    assert result["slice"] == 3 and result["objects"][0]["objectId"] == 1
    status, headers, data = _call(server, "POST", "/v1/Propagate", json.dumps({"sessionId": sid}))
    assert status == 200 and headers["Content-Type"] == "text/event-stream"
    events = _events(data)
    assert [k for k, _ in events][-1] == "end" and {k for k, _ in events[:-1]} == {"message"}
    tracked = [p for _, p in events[:-1] if p.get("pass") != "final"]  # final messages follow the tracked ones
    assert [p["slice"] for p in tracked] == [3, 4, 5, 2, 1, 0]  # the key slice once
    assert tracked[-1]["done"] == tracked[-1]["total"] == 6
    status, headers, data = _call(
        server, "POST", "/v1/GetResult:download", json.dumps({"sessionId": sid, "format": "RESULT_FORMAT_RAW_LABELS"})
    )
    assert status == 200
    chunk = json.loads(headers["X-Medsam2-Chunk"])
    assert chunk["shape"] == [SLICES, ROWS, COLS] and chunk["objectIds"] == [1]
    over_http = np.frombuffer(data, "<u2").reshape(SLICES, ROWS, COLS)
    # The same session over gRPC: one servicer behind both doors.
    client = Client(f"127.0.0.1:{server.port}", token=TOKEN)
    try:
        over_grpc, ids = client.result_labels(sid)
    finally:
        client.close()
    np.testing.assert_array_equal(over_http, over_grpc)
    assert ids == [1] and over_http[3].any() and over_http[0].any()
    status, _, data = _call(server, "POST", "/gateway/v1/Measurements", json.dumps({"sessionId": sid}))
    measured = json.loads(data)
    assert status == 200
    voxels = int((over_http == 1).sum())
    assert measured["objects"][0]["voxels"] == voxels
    assert measured["objects"][0]["volumeMl"] == pytest.approx(voxels * 2.0 * 0.5 * 0.5 / 1000)
    _, _, nifti = _call(
        server, "POST", "/v1/GetResult:download", json.dumps({"sessionId": sid, "format": "RESULT_FORMAT_NIFTI_GZ"})
    )
    assert nifti[:2] == b"\x1f\x8b"
    assert _post(server, "CloseSession", {"sessionId": sid}) == (200, {"closed": True})


def test_wrong_or_missing_token_is_refused_everywhere_but_the_page(server, study) -> None:
    for token in ("wrong", None):
        status, body = _post(server, "ListSessions", {}, token=token)
        assert (status, body["error"]["status"]) == (401, "UNAUTHENTICATED")
        assert "bearer token" in body["error"]["message"]
        status, _, data = _call(server, "POST", "/v1/Propagate", json.dumps({"sessionId": "x"}), token=token)
        assert status == 401 and b"bearer token" in data
        status, body = _upload(server, study[0], token=token)
        assert status == 401
    assert _call(server, "GET", "/openapi.json", token=None)[0] == 200
    assert _post(server, "ListSessions", {})[0] == 200


@pytest.mark.parametrize(
    ("path", "body", "status", "grpc_status", "message"),
    [
        ("/v1/GetSession", '{"sessionId": "nope"}', 404, "NOT_FOUND", "nope"),
        ("/v1/GetSession", '{"sessionId": 3', 400, "INVALID_ARGUMENT", "not a valid GetSessionRequest"),
        ("/v1/GetSession", '{"nosuchField": 1}', 400, "INVALID_ARGUMENT", "nosuchField"),
        ("/v1/Propagate", '{"sessionId": "nope"}', 404, "NOT_FOUND", "nope"),
        ("/v1/GetResult:download", '{"sessionId": "nope"}', 404, "NOT_FOUND", "nope"),
        ("/v1/NoSuchMethod", "{}", 404, "UNIMPLEMENTED", "openapi"),
        ("/v1/GetSession:download", "{}", 404, "UNIMPLEMENTED", "no method"),
    ],
)
def test_bad_requests_get_http_statuses_and_messages(server, path, body, status, grpc_status, message) -> None:
    got, _, data = _call(server, "POST", path, body)
    error = json.loads(data)["error"]
    assert (got, error["status"]) == (status, grpc_status)
    assert message in error["message"]


def test_simple_cross_site_posts_are_refused(server) -> None:
    # A form or text/plain POST needs no CORS preflight: another site could send it from a browser.
    for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        status, _, data = _call(server, "POST", "/v1/ListSessions", "{}", headers={"Content-Type": kind})
        assert status == 415 and b"application/json" in data


def test_bad_uploads_and_preconditions(server, study) -> None:
    frames, _ = study
    status, body = _upload(server, frames, body=frames.tobytes()[:-10])
    assert status == 400 and "truncated" in body["error"]["message"]
    status, body = _upload(server, frames, header={"shape": [SLICES, ROWS], "dtype": "DATA_TYPE_UINT8"})
    assert status == 400 and "shape" in body["error"]["message"]
    status, body = _upload(server, frames, header={"shape": [SLICES, ROWS, COLS], "dtype": "DATA_TYPE_COMPLEX"})
    assert status == 400 and "DATA_TYPE_COMPLEX" in body["error"]["message"]
    status, _, data = _call(
        server, "POST", "/v1/CreateSession", frames.tobytes(), headers={"Content-Type": "application/octet-stream"}
    )
    assert status == 400 and b"X-Medsam2-Header" in data
    too_big = np.zeros((17, ROWS, COLS), np.uint8)
    status, body = _upload(server, too_big)
    assert status in (413, 429) and body["error"]["status"] == "RESOURCE_EXHAUSTED"
    status, session = _upload(server, frames)
    status, body = _post(server, "Propagate", {"sessionId": session["sessionId"]})
    assert (status, body["error"]["status"]) == (400, "FAILED_PRECONDITION")
    assert "no prompts" in body["error"]["message"]
    _post(server, "CloseSession", {"sessionId": session["sessionId"]})


def test_a_browser_leaving_mid_propagation_stops_it_and_frees_the_session(server) -> None:
    frames, boxes = synthetic_volume(seed=5, slices=16, height=ROWS, width=COLS)
    sid = _upload(server, frames)[1]["sessionId"]
    box = boxes[0]
    _post(
        server,
        "AddPrompt",
        {"sessionId": sid, "objectId": 1, "slice": 8, "box": {"x0": box.x0, "y0": box.y0, "x1": box.x1, "y1": box.y1}},
    )
    slices_before = metrics.SLICES.labels(backend=server.backend.name)._value.get()
    body = json.dumps({"sessionId": sid}).encode()
    browser = socket.create_connection(("127.0.0.1", server.http_port), timeout=60)
    browser.sendall(
        b"POST /v1/Propagate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {TOKEN}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    received = b""
    while b"data: " not in received:
        received += browser.recv(4096)
    assert received.startswith(b"HTTP/1.1 200")
    # Close with a reset (linger 0), as a closed tab does: the next event the server writes fails.
    browser.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    browser.close()
    deadline = time.monotonic() + 30
    while _post(server, "GetSession", {"sessionId": sid})[1]["busy"]:
        assert time.monotonic() < deadline, "the session stayed busy after the browser left"
        time.sleep(0.1)
    computed = metrics.SLICES.labels(backend=server.backend.name)._value.get() - slices_before
    assert computed < 17, "the propagation ran to the end although nobody was listening"
    status, _ = _post(
        server,
        "AddPrompt",
        {
            "sessionId": sid,
            "objectId": 1,
            "slice": 2,
            "points": [{"x": box.x0 + 2, "y": box.y0 + 2, "positive": False}],
        },
    )
    assert status == 200, "the session is not usable after the browser left"
    _post(server, "CloseSession", {"sessionId": sid})


def test_any_grpc_service_becomes_routes_through_the_same_interceptors() -> None:
    """Nothing in the gateway names an RPC: grpc.health.v1 served through it works the same way."""
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    from medsam2.gateway.server import Gateway, GatewayOptions, start_gateway
    from medsam2.server.app import AuthInterceptor
    from medsam2.server.auth import Authenticator

    servicer = health.HealthServicer()
    servicer.set("scanner", health_pb2.HealthCheckResponse.SERVING)
    gateway = Gateway(
        [(health_pb2.DESCRIPTOR.services_by_name["Health"], health_pb2_grpc.add_HealthServicer_to_server, servicer)],
        [AuthInterceptor(Authenticator(token="t0ken"))],
        title="health",
        version="v1",
    )
    server = start_gateway(
        gateway, GatewayOptions(host="127.0.0.1", port=0, max_json_bytes=1 << 16, max_upload_bytes=1 << 16)
    )
    try:

        class Running:
            http_port = server.server_address[1]

        assert _post(Running, "Check", {"service": "scanner"}, token="t0ken") == (200, {"status": "SERVING"})
        status, body = _post(Running, "Check", {"service": "printer"}, token="t0ken")
        assert (status, body["error"]["status"]) == (404, "NOT_FOUND")
        # The interceptor's own rule holds here as on the gRPC port: health stays open for probes.
        assert _post(Running, "Check", {"service": "scanner"}, token="wrong")[0] == 200
        paths = json.loads(_call(Running, "GET", "/openapi.json")[2])["paths"]
        assert {"/v1/Check", "/v1/Watch"} <= set(paths)
        assert "text/event-stream" in paths["/v1/Watch"]["post"]["responses"]["200"]["content"]
        assert _call(Running, "GET", "/")[0] in (200, 503)
    finally:
        server.shutdown()
        server.server_close()


@needs_openssl
def test_the_gateway_speaks_mutual_tls_with_the_grpc_certificates(graphs, tmp_path: Path) -> None:
    import ssl

    make_certificates(tmp_path, clients=["reader"])
    settings = ServerSettings(
        port=0,
        metrics_port=0,
        http_port=_free_port(),
        model_repository=graphs["present"],
        tls_cert=tmp_path / "server.pem",
        tls_key=tmp_path / "server.key",
        tls_client_ca=tmp_path / "ca.pem",
    )
    running = start_server(settings, OnnxRuntimeBackend(graphs["present"], threads=1))
    try:
        context = ssl.create_default_context(cafile=tmp_path / "ca.pem")
        context.load_cert_chain(tmp_path / "reader.pem", tmp_path / "reader.key")
        connection = http.client.HTTPSConnection("localhost", running.http_port, context=context, timeout=30)
        connection.request("POST", "/v1/ListSessions", body="{}", headers={"Content-Type": "application/json"})
        assert connection.getresponse().status == 200
        connection.close()
        anonymous = ssl.create_default_context(cafile=tmp_path / "ca.pem")
        with pytest.raises((ssl.SSLError, ConnectionError, http.client.RemoteDisconnected)):
            connection = http.client.HTTPSConnection("localhost", running.http_port, context=anonymous, timeout=30)
            connection.request("POST", "/v1/ListSessions", body="{}", headers={"Content-Type": "application/json"})
            connection.getresponse()
        with pytest.raises((ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine)):
            plain = http.client.HTTPConnection("127.0.0.1", running.http_port, timeout=30)
            plain.request("GET", "/openapi.json")
            plain.getresponse()
    finally:
        running.stop(1)
    # What the servicer sees of that client: grpc's auth_context keys, from the same certificate.
    from medsam2.gateway.context import HttpCallContext

    seen = HttpCallContext((), "ipv4:127.0.0.1:1", certificate=ssl._ssl._test_decode_cert(str(tmp_path / "reader.pem")))
    assert seen.auth_context()["x509_common_name"] == [b"reader"]
    assert seen.peer_identities() == [b"reader"] and seen.peer_identity_key() == "x509_common_name"


def test_a_busy_http_port_is_a_clear_configuration_error(graphs) -> None:
    from medsam2.errors import ConfigError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = ServerSettings(
            port=0, metrics_port=0, http_port=taken.getsockname()[1], model_repository=graphs["present"]
        )
        with pytest.raises(ConfigError, match=r"cannot serve HTTP on 127\.0\.0\.1:\d+ \(--http-port\)"):
            start_server(settings, OnnxRuntimeBackend(graphs["present"], threads=1))
