"""The HTTP gateway at its edge, against a real `medsam2 serve --http-port` child: it authenticates before it reads,
holds idle connections without threads, refuses beyond its caps, and answers malformed requests with JSON 400s.
"""

from __future__ import annotations

import json
import socket
import statistics
import struct
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from medsam2.api.client import Client
from medsam2.errors import REASON_BY_NAME
from medsam2.gateway.connections import MAX_HEAD_BYTES
from medsam2.server.status import status_for
from serve_process import ServeProcess

TOKEN = "edge-test-token"
IDLE_CONNECTIONS = 1000


@pytest.fixture(scope="module")
def service(graphs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    log = tmp_path_factory.mktemp("edge") / "serve.log"
    with ServeProcess(
        graphs["present"], log=log, args=["--auth-token", TOKEN], env={"MEDSAM2_LOG_LEVEL": "DEBUG"}, http=True
    ) as process:
        process.http_port = int(process.url.rstrip("/").rsplit(":", 1)[1])
        yield process


def _status_of(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":", 1) for line in lines if ":" in line)


def _kib(pid: int, key: str) -> int:
    return int(_status_of(pid)[key].split()[0])


def _response(sock: socket.socket, limit_s: float = 60.0) -> tuple[int, dict[str, str], bytes]:
    """Read one HTTP response (status, headers, body by Content-Length) from a raw socket."""
    sock.settimeout(limit_s)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"the connection closed before a response: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if lines[0].split()[1] == "100":  # an interim response; the real one follows
        return _response_after(sock, body, limit_s)
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body[:length]


def _response_after(sock: socket.socket, rest: bytes, limit_s: float) -> tuple[int, dict[str, str], bytes]:
    class Prefixed:
        def __init__(self) -> None:
            self.rest = rest

        def recv(self, n: int) -> bytes:
            if self.rest:
                out, self.rest = self.rest, b""
                return out
            return sock.recv(n)

        def settimeout(self, t: float) -> None:
            sock.settimeout(t)

    return _response(Prefixed(), limit_s)  # type: ignore[arg-type]


def _raw(port: int, request: bytes) -> tuple[int, dict[str, str], dict]:
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(request)
        status, headers, body = _response(sock)
    assert headers["content-type"] == "application/json", (status, headers, body[:200])
    return status, headers, json.loads(body)


def test_an_unauthenticated_60_mib_body_is_refused_unread(service) -> None:
    pid = service.process.pid
    body_bytes = 60 * 2**20
    payload = memoryview(b"[" * body_bytes)
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # restart the peak-RSS count (VmHWM) from now
    rss_before = _kib(pid, "VmRSS")
    sent = [0] * 4
    refusals = []

    def send(index: int) -> None:
        with socket.create_connection(("127.0.0.1", service.http_port), timeout=60) as sock:
            sock.sendall(
                b"POST /v1/ListSessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {body_bytes}\r\n\r\n".encode()
            )
            sender = threading.Thread(target=_push, args=(sock, payload, sent, index), daemon=True)
            sender.start()
            refusals.append(_response(sock))
            sender.join(30)

    clients = [threading.Thread(target=send, args=(i,)) for i in range(len(sent))]
    for client in clients:
        client.start()
    for client in clients:
        client.join(120)
    growth_mb = (_kib(pid, "VmHWM") - rss_before) / 1024
    assert len(refusals) == len(sent)
    for status, headers, data in refusals:
        error = json.loads(data)["error"]
        assert (status, error["status"]) == (401, "UNAUTHENTICATED")
        assert {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "UNAUTHENTICATED"}.items() <= (
            error["details"][0].items()
        )
        assert headers["connection"] == "close"
    # What the kernel's socket buffers and the bounded lingering read (1 MiB) took, never the 60 MiB body.
    assert max(sent) < 16 * 2**20, sent
    print(f"peak RSS growth for {len(sent)} x 60 MiB unauthenticated bodies: {growth_mb:.1f} MB; sent {sent}")
    assert growth_mb < 20


def _push(sock: socket.socket, payload: memoryview, sent: list[int], index: int) -> None:
    try:
        while sent[index] < len(payload):
            sent[index] += sock.send(payload[sent[index] : sent[index] + 65536])
    except OSError:  # the server closed after its refusal: what we wanted
        pass


def test_expect_100_continue_is_answered_only_after_the_token(service) -> None:
    # curl sends "Expect: 100-continue" for large bodies and waits: a refused caller is told before sending any.
    with socket.create_connection(("127.0.0.1", service.http_port), timeout=60) as sock:
        sock.sendall(
            b"POST /v1/ListSessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Expect: 100-continue\r\nContent-Length: 50000000\r\n\r\n"
        )
        status, _, data = _response(sock)
    assert status == 401 and b"bearer token" in data
    with socket.create_connection(("127.0.0.1", service.http_port), timeout=60) as sock:
        sock.sendall(
            b"POST /v1/ListSessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {TOKEN}\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n".encode()
        )
        sock.settimeout(60)
        interim = sock.recv(64)
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"), interim
        sock.sendall(b"{}")
        status, _, data = _response_after(sock, interim[len(b"HTTP/1.1 100 Continue\r\n\r\n") :], 60)
    assert status == 200 and "sessions" in json.loads(data)


_LONG_HEAD = b"GET /healthz HTTP/1.1\r\nX-Big: "


@pytest.mark.parametrize(
    ("request_bytes", "status", "reason"),
    [
        (
            b"POST /v1/ListSessions HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: abc\r\n\r\n",
            400,
            "MALFORMED_REQUEST",
        ),
        (
            b"POST /v1/ListSessions HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: \xb2\r\n\r\n",
            400,
            "MALFORMED_REQUEST",
        ),
        (
            b"POST /v1/ListSessions HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: -1\r\n\r\n",
            400,
            "MALFORMED_REQUEST",
        ),
        (
            b"POST /v1/ListSessions HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
            400,
            "MALFORMED_REQUEST",
        ),
        (
            b"POST /v1/ListSessions HTTP/1.1\r\nContent-Type: application/json\r\nTransfer-Encoding: gzip\r\n\r\n",
            501,
            "UNSUPPORTED_PROTOCOL",
        ),
        (
            b"POST /v1/GetSession HTTP/1.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"zz\r\n{}\r\n0\r\n\r\n",
            400,
            "MALFORMED_REQUEST",
        ),
        (b"GET /static/%00 HTTP/1.1\r\n\r\n", 404, "NO_SUCH_PATH"),
        (b"GET /static/" + b"a" * 5000 + b" HTTP/1.1\r\n\r\n", 404, "NO_SUCH_PATH"),
        (b"GET /static/" + b"a/" * 2000 + b"b HTTP/1.1\r\n\r\n", 404, "NO_SUCH_PATH"),
        (b"GET /static/%ff%fe HTTP/1.1\r\n\r\n", 404, "NO_SUCH_PATH"),
        (b"HELLO\r\n\r\n", 400, "MALFORMED_REQUEST"),
        (b"GET / HTTP/9.9\r\n\r\n", 505, "UNSUPPORTED_PROTOCOL"),
        (b"DELETE /v1/GetSession HTTP/1.1\r\n\r\n", 501, "UNSUPPORTED_PROTOCOL"),
        (b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n", 431, "HEADERS_TOO_LARGE"),
        (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", 414, "HEADERS_TOO_LARGE"),
        # Past the listener's own head limit, and not a byte more (nothing is left unread when it closes): refused
        # before a worker reads it.
        (
            _LONG_HEAD + b"a" * (MAX_HEAD_BYTES + 1 - len(_LONG_HEAD)),
            431,
            "HEADERS_TOO_LARGE",
        ),
    ],
)
def test_malformed_requests_get_a_json_error_and_no_traceback(service, request_bytes, status, reason) -> None:
    """Each gets HTTP's own status, and the catalogue's status and details for its reason."""
    line, sep, rest = request_bytes.partition(b"\r\n")
    if line.startswith(b"POST"):  # authenticated: what is refused is the request's form, not the caller
        request_bytes = line + sep + f"Authorization: Bearer {TOKEN}\r\n".encode() + rest
    got, _, body = _raw(service.http_port, request_bytes)
    assert got == status, body
    code = status_for(REASON_BY_NAME[reason].error)
    assert (body["error"]["code"], body["error"]["status"]) == (status, code.name), body
    kinds = [d["@type"].removeprefix("type.googleapis.com/google.rpc.") for d in body["error"]["details"]]
    assert kinds == (["ErrorInfo", "BadRequest"] if code is grpc.StatusCode.INVALID_ARGUMENT else ["ErrorInfo"])
    assert body["error"]["details"][0]["reason"] == reason
    assert "Traceback" not in service.log.read_text(errors="replace")


@pytest.mark.parametrize(
    "body",
    [b'{"sessionId": 3', b"\xff\xfe{}", b"[" * 100_000, b'"just a string"', b'{"sessionId": "' + b"x" * 5000 + b'"}'],
)
def test_malformed_json_bodies_get_a_400(service, body: bytes) -> None:
    request = (
        b"POST /v1/GetSession HTTP/1.1\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {TOKEN}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    status, _, answer = _raw(service.http_port, request)
    assert (status, answer["error"]["status"]) == (400, "INVALID_ARGUMENT"), answer
    assert "Traceback" not in service.log.read_text(errors="replace")


def test_a_client_that_leaves_mid_upload_is_one_debug_line(service) -> None:
    before = service.log.read_text(errors="replace").count("HTTP client 127.0.0.1 left")
    header = json.dumps({"shape": [64, 64, 64], "dtype": "DATA_TYPE_UINT8"})
    with socket.create_connection(("127.0.0.1", service.http_port), timeout=60) as sock:
        sock.sendall(
            b"POST /v1/CreateSession HTTP/1.1\r\nContent-Type: application/octet-stream\r\n"
            + f"Authorization: Bearer {TOKEN}\r\nX-Medsam2-Header: {header}\r\nContent-Length: {64**3}\r\n\r\n".encode()
            + b"\0" * 1000
        )
        time.sleep(1.0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # a reset, as a closed tab
    deadline = time.monotonic() + 30
    while service.log.read_text(errors="replace").count("HTTP client 127.0.0.1 left") == before:
        assert time.monotonic() < deadline, "the departure was not logged"
        time.sleep(0.2)
    time.sleep(1.0)
    text = service.log.read_text(errors="replace")
    assert text.count("HTTP client 127.0.0.1 left") == before + 1
    assert "Traceback" not in text and "BrokenPipe" not in text.replace("left: BrokenPipeError", "")


def test_a_thousand_idle_connections_leave_grpc_and_http_answering(service) -> None:
    pid = service.process.pid
    idle = []
    try:
        for _ in range(IDLE_CONNECTIONS):
            idle.append(socket.create_connection(("127.0.0.1", service.http_port), timeout=60))
        # Half of them also start a request and stall in its headers (a slow client, not just a quiet one).
        for sock in idle[::2]:
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        time.sleep(2.0)
        threads = int(_status_of(pid)["Threads"])
        client = Client(service.grpc_target, token=TOKEN)
        channel = grpc.insecure_channel(service.grpc_target)
        timings: dict[str, list[float]] = {"health": [], "GetServerInfo": [], "HTTP GET": []}
        try:
            health = health_pb2_grpc.HealthStub(channel)
            for _ in range(5):
                started = time.perf_counter()
                health.Check(health_pb2.HealthCheckRequest(), timeout=60)
                timings["health"].append(time.perf_counter() - started)
                started = time.perf_counter()
                client.server_info()
                timings["GetServerInfo"].append(time.perf_counter() - started)
                started = time.perf_counter()
                status, _, body = _raw(service.http_port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                timings["HTTP GET"].append(time.perf_counter() - started)
                assert status == 200 and body == {"status": "ok"}
        finally:
            client.close()
            channel.close()
        medians = {name: statistics.median(values) for name, values in timings.items()}
        print(f"with {IDLE_CONNECTIONS} idle connections: {threads} server threads; median latency {medians}")
        # The connections wait in one selector: the worker pool (32) and gRPC's threads are all there is.
        assert threads < 120, threads
        for name, seconds in medians.items():
            assert seconds < 1.0, (name, timings[name])
    finally:
        for sock in idle:
            sock.close()


def test_beyond_its_caps_the_gateway_answers_503_with_retry_after() -> None:
    """One worker, one queue place, eight connections: what comes beyond is refused at once, unread."""
    from grpc_health.v1 import health

    from medsam2.gateway.connections import ConnectionLimits
    from medsam2.gateway.server import Gateway, GatewayOptions, start_gateway

    servicer = health.HealthServicer()
    servicer.set("scanner", health_pb2.HealthCheckResponse.SERVING)
    gateway = Gateway(
        [(health_pb2.DESCRIPTOR.services_by_name["Health"], health_pb2_grpc.add_HealthServicer_to_server, servicer)],
        [],
        title="health",
        version="v1",
    )
    limits = ConnectionLimits(workers=1, queued=1, max_connections=8)
    server = start_gateway(
        gateway,
        GatewayOptions(host="127.0.0.1", port=0, max_json_bytes=1 << 16, max_upload_bytes=1 << 16, limits=limits),
    )
    port = server.server_address[1]
    opened: list[socket.socket] = []
    try:
        watch = socket.create_connection(("127.0.0.1", port), timeout=60)
        opened.append(watch)
        body = b'{"service": "scanner"}'
        watch.sendall(
            b"POST /v1/Watch HTTP/1.1\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        received = b""
        while b"SERVING" not in received:  # the stream holds the only worker now
            received += watch.recv(4096)
        queued = socket.create_connection(("127.0.0.1", port), timeout=60)
        opened.append(queued)
        queued.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
        time.sleep(0.5)
        status, headers, data = _raw(port, b"GET /healthz HTTP/1.1\r\n\r\n")
        assert (status, headers["retry-after"], data["error"]["status"]) == (503, "1", "UNAVAILABLE")
        assert data["error"]["details"] == [  # the catalogue's details, as every gateway refusal carries them
            {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "GATEWAY_BUSY", "domain": "medsam2"},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1s"},
        ]
        while server.open_connections < limits.max_connections:
            opened.append(socket.create_connection(("127.0.0.1", port), timeout=60))
            time.sleep(0.05)
        status, headers, data = _raw(port, b"GET /healthz HTTP/1.1\r\n\r\n")
        assert (status, headers["retry-after"]) == (503, "1") and "connections" in data["error"]["message"]
        # The stream's client leaves; at the stream's next message its worker is free and serves the queued request.
        watch.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        watch.close()
        servicer.set("scanner", health_pb2.HealthCheckResponse.NOT_SERVING)
        status, _, answer = _response(queued)
        assert status == 200 and json.loads(answer) == {"status": "ok"}
    finally:
        for sock in opened:
            sock.close()
        servicer.enter_graceful_shutdown()
        server.shutdown()
        server.server_close()
