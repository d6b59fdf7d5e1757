"""SIGTERM drains `medsam2 serve`: streams in flight over gRPC and over the gateway's SSE end with a reason to retry.

A real child process with the HTTP gateway runs two propagations at once, one read over gRPC and one over
server-sent events by a plain HTTP client (what the web page does). SIGTERM arrives once both have streamed a
slice; with a grace period of 1 s and studies far longer than that, both streams are cut at the deadline. They
must end with UNAVAILABLE and the ErrorInfo reason SERVER_SHUTTING_DOWN (and a RetryInfo), and the process must
exit 0, not abort inside ONNX Runtime because a session was freed under a running call.
"""

from __future__ import annotations

import http.client
import json
import signal
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from medsam2.api.client import Client
from medsam2_export.parity import synthetic_volume
from rpc_errors import rpc_reason
from serve_process import ServeProcess

pytestmark = pytest.mark.slow

SLICES = 40
"""Long enough that no propagation can finish in the 1 s grace period (one 512x512 slice is ~0.1 s at best)."""
EXIT_TIMEOUT_S = 120.0
"""The drain ends at the grace period plus one slice (0.5 s idle here, 10 s under a load of 28 on 2 cores); the
server is given as long to end its streams (--drain-end-s) as the test waits, so a slow slice is never cut by
gRPC's hard stop (CANCELLED, no reason) instead of ending with SERVER_SHUTTING_DOWN."""


def _sse_events(response: http.client.HTTPResponse):
    """(event, data) pairs of a server-sent event stream, as they arrive."""
    kind, data = "message", ""
    while True:
        line = response.readline()
        if not line:
            return
        line = line.decode().rstrip("\n")
        if not line:
            yield kind, json.loads(data) if data else {}
            kind, data = "message", ""
        elif line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            data += line[6:]


def test_sigterm_ends_grpc_and_sse_streams_with_server_shutting_down_and_exits_0(
    graphs: dict[str, Path], tmp_path: Path
) -> None:
    log = tmp_path / "serve.log"
    server = ServeProcess(
        graphs["present"], log=log, http=True, args=["--grace-s", "1", "--drain-end-s", str(EXIT_TIMEOUT_S)]
    )
    client = Client(server.target)
    try:
        sessions = []
        for seed in (31, 32):
            frames, boxes = synthetic_volume(seed, slices=SLICES, height=48, width=56)
            sid = client.create_session(frames, preset="none").session_id
            box = boxes[0]
            client.add_box(sid, 1, SLICES // 2, (box.x0, box.y0, box.x1, box.y1))
            sessions.append(sid)

        over_grpc = client.propagate(sessions[0])
        assert next(over_grpc).total > 10

        url = urlsplit(server.url)
        browser = http.client.HTTPConnection(url.hostname, url.port, timeout=EXIT_TIMEOUT_S)
        browser.request(
            "POST",
            "/v1/Propagate",
            body=json.dumps({"sessionId": sessions[1]}),
            headers={"Content-Type": "application/json", "Accept": "text/event-stream"},
        )
        response = browser.getresponse()
        assert response.status == 200 and response.getheader("Content-Type") == "text/event-stream"
        events = _sse_events(response)
        kind, first = next(events)
        assert kind == "message" and first["total"] > 10

        server.process.send_signal(signal.SIGTERM)

        with pytest.raises(grpc.RpcError) as cut:
            for _ in over_grpc:
                pass
        assert cut.value.code() == grpc.StatusCode.UNAVAILABLE
        assert rpc_reason(cut.value) == "SERVER_SHUTTING_DOWN"
        retry = error_details_pb2.RetryInfo()
        assert any(d.Unpack(retry) for d in rpc_status.from_call(cut.value).details if d.Is(retry.DESCRIPTOR))
        assert retry.retry_delay.ToTimedelta().total_seconds() > 0

        rest = list(events)
        assert rest and rest[-1][0] == "error", f"the SSE stream ended without an error event: {rest[-1:]}"
        error = rest[-1][1]["error"]
        assert error["status"] == "UNAVAILABLE" and error["code"] == 503
        reasons = [d.get("reason") for d in error["details"]]
        assert "SERVER_SHUTTING_DOWN" in reasons
        assert any("retryDelay" in d for d in error["details"])
        assert all(k == "message" for k, _ in rest[:-1])
        browser.close()

        assert server.process.wait(EXIT_TIMEOUT_S) == 0, log.read_text(errors="replace")[-3000:]
        text = log.read_text(errors="replace")
        assert "terminate called" not in text and "Traceback" not in text, text[-3000:]
        assert "drained and stopped" in text
    finally:
        client.close()
        server.kill()
