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
from serve_process import free_port

SLICES, ROWS, COLS = 6, 48, 56
TOKEN = "gateway-test-token"


@pytest.fixture(scope="module")
def study() -> tuple[np.ndarray, list]:
    return synthetic_volume(seed=21, slices=SLICES, height=ROWS, width=COLS)


def _gateway(graphs: dict[str, Path], *, slices: int, threads: int):
    """A server with its HTTP gateway and a token, whose voxel limit admits ``slices`` (each counts at 512 x 512)."""
    settings = ServerSettings(
        port=0,
        metrics_port=0,
        http_port=free_port(),
        model_repository=graphs["present"],
        auth_token=TOKEN,
        max_study_voxels=slices * 512 * 512,
    )
    return start_server(settings, OnnxRuntimeBackend(graphs["present"], threads=threads))


@pytest.fixture(scope="module")
def server(graphs: dict[str, Path]):
    running = _gateway(graphs, slices=16, threads=2)
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
    assert session["sessionId"]["type"] == "string" and "Opaque id" in session["sessionId"]["description"]
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
        ("/v1/NoSuchMethod", "{}", 404, "NOT_FOUND", "openapi"),
        ("/v1/GetSession:download", "{}", 404, "NOT_FOUND", "no method"),
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
        http_port=free_port(),
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


# -- the OpenAPI document rejects, and the server's real answers fit it ------------------------------------------
# jsonschema is in the dev extra (scripts/test_deps.sh installs it): a missing one fails these tests, never skips,
# and is imported where it is used so that the other tests of this module still run without it.
@pytest.fixture(scope="module")
def document(server) -> dict:
    import jsonschema

    status, _, data = _call(server, "GET", "/openapi.json", token=None)
    assert status == 200
    spec = json.loads(data)
    jsonschema.Draft202012Validator.check_schema({"components": spec["components"]})
    return spec


def _validator(document: dict, schema: dict):
    import jsonschema

    return jsonschema.Draft202012Validator({**schema, "components": document["components"]})


def _check(document: dict, path: str, status: int, headers: dict, body, *, event: str = "") -> None:
    """The answer's status is declared for the operation, its body fits the declared schema, its headers exist."""
    responses = document["paths"][path]["post"]["responses"]
    assert str(status) in responses, f"{path} answered {status}, which the document does not declare"
    declared = responses[str(status)]
    for name in declared.get("headers", {}):
        assert name in headers, f"{path} {status} lacks its declared {name} header"
    if status >= 400:
        schema = declared["content"]["application/json"]["schema"]
    else:
        content = declared["content"]
        media = content.get("application/json") or content["text/event-stream"]
        schema = media[{"": "schema", "message": "x-event-schema", "end": "x-end-event-schema"}.get(event, "schema")]
        if event == "error":
            schema = media["x-error-event-schema"]
    _validator(document, schema).validate(body)


def test_the_server_s_real_answers_fit_the_openapi_document(server, study, document) -> None:
    frames, boxes = study
    status, session = _upload(server, frames)
    _check(document, "/v1/CreateSession", status, {}, session)
    sid = session["sessionId"]
    box = boxes[0]
    prompt = {
        "sessionId": sid,
        "objectId": 1,
        "slice": 3,
        "box": {"x0": box.x0, "y0": box.y0, "x1": box.x1, "y1": box.y1},
    }
    status, result = _post(server, "AddPrompt", prompt)
    _check(document, "/v1/AddPrompt", status, {}, result)
    status, headers, data = _call(server, "POST", "/v1/Propagate", json.dumps({"sessionId": sid}))
    events = _events(data)
    assert events[-1] == ("end", {})
    for kind, payload in events:
        _check(document, "/v1/Propagate", status, headers, payload, event=kind)
    for name in ("GetSession", "ListSessions", "GetServerInfo"):
        status, body = _post(server, name, {"sessionId": sid} if name == "GetSession" else {})
        _check(document, f"/v1/{name}", status, {}, body)
    status, headers, _ = _call(server, "POST", "/v1/GetResult:download", json.dumps({"sessionId": sid}))
    assert status == 200 and "X-Medsam2-Chunk" in headers
    assert "X-Medsam2-Chunk" in document["paths"]["/v1/GetResult:download"]["post"]["responses"]["200"]["headers"]
    # Errors: each status is declared, with the google.rpc.Status body.
    for path, body, token in [
        ("/v1/GetSession", {"sessionId": "nope"}, TOKEN),
        ("/v1/GetSession", {"nosuchField": 1}, TOKEN),
        ("/v1/ListSessions", {}, "wrong"),
        ("/v1/Propagate", {"sessionId": "nope"}, TOKEN),
    ]:
        status, headers, data = _call(server, "POST", path, json.dumps(body), token=token)
        assert status >= 400
        _check(document, path, status, headers, json.loads(data))
    status, headers, data = _call(server, "POST", "/v1/ListSessions", "{}", headers={"Content-Type": "text/plain"})
    _check(document, "/v1/ListSessions", status, headers, json.loads(data))
    _post(server, "CloseSession", {"sessionId": sid})


def test_the_document_refuses_what_the_server_refuses(server, document) -> None:
    import jsonschema

    from medsam2.server.request_checks import REQUIRED_FIELDS

    schemas = document["components"]["schemas"]
    assert schemas["medsam2.v1.GetSessionRequest"]["required"] == ["sessionId"]
    with pytest.raises(jsonschema.ValidationError, match="'sessionId' is a required property"):
        _validator(document, {"$ref": "#/components/schemas/medsam2.v1.GetSessionRequest"}).validate({})
    with pytest.raises(jsonschema.ValidationError, match="Additional properties are not allowed"):
        _validator(document, {"$ref": "#/components/schemas/medsam2.v1.GetSessionRequest"}).validate(
            {"sessionId": "a", "sessionID": "b"}
        )
    # Every field the document calls required is one the server refuses a request without.
    for message, fields in REQUIRED_FIELDS.items():
        name = message.removeprefix("medsam2.v1.").removesuffix("Request")
        assert [f for f in fields] and name in {p.removeprefix("/v1/") for p in document["paths"]}
        status, body = _post(server, name, {})
        assert 400 <= status < 500 and status != 401, (name, status, body)
    # The proto's comments are the descriptions; the end event of a stream is described.
    assert "Opaque id" in schemas["medsam2.v1.Session"]["properties"]["sessionId"]["description"]
    assert "x = column" in schemas["medsam2.v1.Box"]["description"]
    assert schemas["StreamEnd"] == {
        "type": "object",
        "description": schemas["StreamEnd"]["description"],
        "additionalProperties": False,
    }
    for path in document["paths"].values():
        assert {"400", "401", "413", "415", "429", "503"} <= set(path["post"]["responses"])
        assert "Retry-After" in path["post"]["responses"]["429"]["headers"]


# -- errors carry the same google.rpc details as gRPC ------------------------------------------------------------
def test_rest_errors_carry_the_grpc_details(server) -> None:
    import grpc
    from google.protobuf import json_format
    from grpc_status import rpc_status

    status, body = _post(server, "GetSession", {"sessionId": "no-such-session"})
    client = Client(f"127.0.0.1:{server.port}", token=TOKEN)
    try:
        with pytest.raises(grpc.RpcError) as failure:
            client.get_session("no-such-session")
    finally:
        client.close()
    grpc_status = rpc_status.from_call(failure.value)
    assert grpc_status is not None
    over_grpc = [json_format.MessageToDict(d) for d in grpc_status.details]
    assert status == 404 and body["error"]["details"] == over_grpc
    assert body["error"]["details"][0]["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
    assert body["error"]["details"][0]["domain"] == "medsam2"
    # INVALID_ARGUMENT with its BadRequest field violation, as gRPC has it.
    status, body = _post(server, "GetResult", {"sessionId": "x", "format": 99})
    types = [d["@type"] for d in body["error"]["details"]]
    assert status == 400 and "type.googleapis.com/google.rpc.BadRequest" in types


def test_429_and_503_carry_retry_after_from_retry_info(server, study) -> None:
    frames, _ = study
    too_big = np.zeros((17, 512, 512), np.uint8)  # over the server's 16 x 512 x 512 voxels
    status, headers, data = _call(
        server,
        "POST",
        "/v1/CreateSession",
        too_big.tobytes(),
        headers={
            "Content-Type": "application/octet-stream",
            "X-Medsam2-Header": json.dumps({"shape": [17, 512, 512], "dtype": "DATA_TYPE_UINT8"}),
        },
    )
    error = json.loads(data)["error"]
    retry = [d for d in error.get("details", []) if d["@type"].endswith("RetryInfo")]
    assert status == 429 and error["status"] == "RESOURCE_EXHAUSTED", error
    if retry:  # a refusal that a retry can cure says when; a permanent one may say nothing
        assert int(headers["Retry-After"]) >= 1
        assert float(retry[0]["retryDelay"].removesuffix("s")) <= int(headers["Retry-After"])


# -- uploads without cramps: chunked bodies, the header in the body ----------------------------------------------
def _chunked(parts: list[bytes]) -> bytes:
    return b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in parts if p) + b"0\r\n\r\n"


def _raw_request(server, head: str, body: bytes) -> tuple[int, dict]:
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=60) as sock:
        sock.sendall(head.encode() + b"\r\n" + body)
        sock.settimeout(60)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            head_bytes, _, rest = data.partition(b"\r\n\r\n")
            if rest and b"content-length:" in head_bytes.lower():
                length = int(head_bytes.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                if len(rest) >= length:
                    break
    status = int(data.split(b" ", 2)[1])
    return status, json.loads(data.partition(b"\r\n\r\n")[2])


@pytest.fixture(scope="module")
def tall_server(graphs: dict[str, Path]):
    """A server whose voxel limit admits 1,000 slices (each counts at the model's 512 x 512)."""
    running = _gateway(graphs, slices=1000, threads=1)
    yield running
    running.stop(2)


def test_a_chunked_framed_upload_carries_a_header_of_a_thousand_sop_instance_uids(tall_server, server) -> None:
    slices = 1000
    voxels = (np.arange(slices * 8 * 8) % 251).astype(np.uint8).reshape(slices, 8, 8)
    uids = [f"1.2.826.0.1.3680043.8.498.{i + 1:038d}" for i in range(slices)]  # 64 characters, the most a UID has
    header = json.dumps(
        {
            "shape": [slices, 8, 8],
            "dtype": "DATA_TYPE_UINT8",
            "preprocessing": {"preset": "none"},
            "sopInstanceUids": uids,
        }
    ).encode()
    assert len(header) > 64 * 1024  # more than the HTTP server takes in one request header
    body = struct.pack(">I", len(header)) + header + voxels.tobytes()
    head = (
        "POST /v1/CreateSession HTTP/1.1\r\nHost: x\r\nContent-Type: application/vnd.medsam2.upload\r\n"
        f"Authorization: Bearer {TOKEN}\r\nTransfer-Encoding: chunked\r\n"
    )
    # Chunks that split the length prefix, the header and the voxels anywhere.
    parts = [body[i : i + 7919] for i in range(0, len(body), 7919)]
    status, session = _raw_request(tall_server, head, _chunked(parts))
    assert status == 200, session
    assert session["shape"] == [slices, 8, 8]
    _post(tall_server, "CloseSession", {"sessionId": session["sessionId"]})
    # The same header as X-Medsam2-Header is too large for an HTTP header: a JSON 431, not an HTML page.
    status, _, data = _call(
        server,
        "POST",
        "/v1/CreateSession",
        voxels.tobytes(),
        headers={"Content-Type": "application/octet-stream", "X-Medsam2-Header": header.decode()},
    )
    error = json.loads(data)["error"]
    assert (status, error["status"], error["details"][0]["reason"]) == (431, "RESOURCE_EXHAUSTED", "HEADERS_TOO_LARGE")


def test_chunked_and_framed_bodies_are_bounded(server, study) -> None:
    frames, _ = study
    header = json.dumps({"shape": list(frames.shape), "dtype": "DATA_TYPE_UINT8"}).encode()
    auth = f"Authorization: Bearer {TOKEN}\r\n"
    # A chunked JSON body larger than the message limit is cut off at the limit: 413, not read to its end.
    status, body = _raw_request(
        server,
        f"POST /v1/GetSession HTTP/1.1\r\nContent-Type: application/json\r\n{auth}Transfer-Encoding: chunked\r\n",
        b"%x\r\n" % (128 * 2**20) + b"{" * 4096,
    )
    assert (status, body["error"]["status"]) == (413, "RESOURCE_EXHAUSTED")
    # A framed header that claims more than the message limit.
    status, body = _raw_request(
        server,
        f"POST /v1/CreateSession HTTP/1.1\r\nContent-Type: application/vnd.medsam2.upload\r\n{auth}"
        "Content-Length: 10\r\n",
        struct.pack(">I", 2**31) + b"{}" + b"\0" * 4,
    )
    assert (status, body["error"]["status"]) == (413, "RESOURCE_EXHAUSTED")
    assert "header" in body["error"]["message"]
    # A framed upload cut short inside its header.
    status, body = _raw_request(
        server,
        f"POST /v1/CreateSession HTTP/1.1\r\nContent-Type: application/vnd.medsam2.upload\r\n{auth}"
        "Content-Length: 8\r\n",
        struct.pack(">I", len(header)) + header[:4],
    )
    assert (status, body["error"]["status"]) == (400, "INVALID_ARGUMENT")
    # A chunked JSON request works like any other.
    status, body = _raw_request(
        server,
        f"POST /v1/ListSessions HTTP/1.1\r\nContent-Type: application/json\r\n{auth}Transfer-Encoding: chunked\r\n",
        _chunked([b"{", b"}"]),
    )
    assert status == 200 and "sessions" in body
