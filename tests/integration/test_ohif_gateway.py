"""OHIF at /ohif/: its files, the generated app-config.js, CORS, and the DICOMweb proxy against a real PACS stand-in.

The PACS is a real HTTP server written here (it records what reaches it and can answer too much or too slowly);
the gateway is the real one, with the real authenticator. The OHIF files are a stand-in folder with the shape
scripts/build_web.sh gives (the browser test serves the real build).
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import pytest

from medsam2.errors import REASON_BY_NAME, ConfigError
from medsam2.gateway.ohif import OhifSite, parse_origins
from medsam2.gateway.server import Gateway, GatewayOptions, start_gateway
from medsam2.pacs.config import PacsConfig, PacsEndpoint
from medsam2.server.auth import Authenticator
from medsam2.server.status import status_for

TOKEN = "ohif-reader-token"
STUDY, SERIES, SOP = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2", "1.2.826.0.1.3680043.8.498.3"
LIMIT = 64 * 1024
SITE = "https://viewer.example.org"


class Pacs(BaseHTTPRequestHandler):
    """A DICOMweb server: answers by path, records every request it sees."""

    seen: list[tuple[str, dict[str, str]]] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        Pacs.seen.append((self.path, dict(self.headers)))
        if self.path.startswith("/dicom-web/studies?"):
            body = json.dumps([{"0020000D": {"vr": "UI", "Value": [STUDY]}}]).encode()
            self._reply(body, "application/dicom+json")
        elif self.path.endswith("/frames/1"):
            self._reply(b"x" * (LIMIT + 1), "multipart/related")  # declared too large
        elif self.path.endswith("/frames/2"):
            self.send_response(200)  # too large, undeclared: the proxy counts while reading
            self.send_header("Content-Type", "multipart/related")
            self.end_headers()
            for _ in range(LIMIT // 4096 + 2):
                self.wfile.write(b"y" * 4096)
            self.close_connection = True
        elif self.path.endswith("/frames/3"):
            self.send_response(200)  # slow: one byte a while, past the endpoint's deadline
            self.send_header("Content-Type", "multipart/related")
            self.end_headers()
            for _ in range(200):
                self.wfile.write(b"z")
                self.wfile.flush()
                time.sleep(0.1)
            self.close_connection = True
        elif self.path.endswith("/frames/4"):
            self._reply(b"", "text/plain", 401)  # the service's PACS credentials are refused
        elif self.path.endswith("/frames/5"):
            self._reply(b"", "text/plain", 500)  # a PACS fault a retry may cure
        elif self.path.endswith("/metadata"):
            self._reply(b"[]", "application/dicom+json")
        else:
            self._reply(b"", "text/plain", 404)

    def _reply(self, body: bytes, kind: str, status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Pacs-Internal", "secret-topology")
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def pacs() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Pacs)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ohif")
    (root / "index.html").write_text('<script src="/ohif/app.bundle.js"></script>')
    (root / "app.bundle.js").write_text("console.log('ohif')")
    (root / "medsam2").mkdir()
    (root / "medsam2" / "extension.js").write_text("export default {id: 'medsam2'}")
    (root.parent / "outside.txt").write_text("not OHIF's")
    return root


@pytest.fixture(scope="module")
def gateway(pacs: str, built: Path) -> Iterator[int]:
    endpoint = PacsEndpoint("orthanc", pacs, username="medsam2", password="pacs-password", timeout_s=2.0)
    auth = Authenticator(token=TOKEN)
    site = OhifSite(PacsConfig({"orthanc": endpoint}), auth.principal_of, root=built, max_response_bytes=LIMIT)
    options = GatewayOptions(
        "127.0.0.1", 0, 1 << 20, 1 << 20, ohif=site, cors_origins=parse_origins(f"{SITE},http://localhost:3000")
    )
    server = start_gateway(Gateway([], [], title="t", version="v1"), options)
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _get(port: int, path: str, headers: dict[str, str] | None = None, method: str = "GET"):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request(method, path, headers=headers or {})
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return response.status, dict(response.headers), body


def _reader() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}", "Accept": "application/dicom+json"}


def test_ohif_files_and_its_routes_are_served(gateway: int) -> None:
    status, headers, body = _get(gateway, "/ohif/")
    assert status == 200 and b"/ohif/app.bundle.js" in body
    assert (
        "'unsafe-inline'" in headers["Content-Security-Policy"]
        and "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    )
    assert _get(gateway, "/ohif/viewer?StudyInstanceUIDs=1.2.3")[2] == body  # the single page's own routes
    status, headers, _ = _get(gateway, "/ohif/medsam2/extension.js")
    assert status == 200 and "javascript" in headers["Content-Type"]
    assert _get(gateway, "/ohif/no-such.js")[0] == 404
    assert _get(gateway, "/ohif/..%2foutside.txt")[0] == 404
    # The light page keeps its strict policy.
    assert "'unsafe-inline'" not in _get(gateway, "/healthz")[1]["Content-Security-Policy"]


def test_app_config_names_each_endpoint_through_the_proxy_and_loads_the_extension(gateway: int) -> None:
    status, _, body = _get(gateway, "/ohif/app-config.js")
    assert status == 200
    text = body.decode()
    assert text.startswith("window.config = ")
    config = json.loads(text.removeprefix("window.config = ").rstrip().rstrip(";"))
    assert config["routerBasename"] == "/ohif" and config["extensions"] == ["/ohif/medsam2/extension.js"]
    assert config["medsam2"] == {"api": "", "endpoints": ["orthanc"], "proxy": True}
    [source] = config["dataSources"]
    assert source["sourceName"] == config["defaultDataSourceName"] == "orthanc"
    for root in ("qidoRoot", "wadoRoot", "wadoUriRoot"):
        assert source["configuration"][root] == "/ohif/dicomweb/orthanc"
    assert "pacs-password" not in text and "127.0.0.1" not in text  # the browser never sees the PACS


def test_the_proxy_passes_a_search_with_the_services_credentials_only(gateway: int, pacs: str) -> None:
    Pacs.seen.clear()
    status, headers, body = _get(gateway, "/ohif/dicomweb/orthanc/studies?PatientID=P1&limit=101", _reader())
    assert status == 200 and json.loads(body)[0]["0020000D"]["Value"] == [STUDY]
    assert headers["Content-Type"] == "application/dicom+json" and "X-Pacs-Internal" not in headers
    [(path, sent)] = Pacs.seen
    assert path == "/dicom-web/studies?PatientID=P1&limit=101"
    assert sent["Authorization"].startswith("Basic ") and TOKEN not in json.dumps(sent)
    assert sent["Accept"] == "application/dicom+json"
    ok = f"/ohif/dicomweb/orthanc/studies/{STUDY}/series/{SERIES}/instances/{SOP}/metadata"
    assert _get(gateway, ok, _reader())[0] == 200


@pytest.mark.parametrize(
    ("token", "message"), [(None, "missing credentials"), ("wrong", "wrong bearer token")], ids=["none", "wrong"]
)
def test_the_proxy_refuses_a_caller_without_the_token_before_the_pacs_hears_of_it(
    gateway: int, token: str | None, message: str
) -> None:
    Pacs.seen.clear()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    status, reply, body = _get(gateway, "/ohif/dicomweb/orthanc/studies", headers)
    assert status == 401 and reply["WWW-Authenticate"] == "Bearer"
    assert message in json.loads(body)["error"]["message"] and Pacs.seen == []


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        (f"studies/{STUDY}", 403, "passes only QIDO-RS searches and WADO-RS reads"),  # a whole-study retrieve
        (f"studies/{STUDY}/series/{SERIES}/instances/{SOP}", 403, "passes only"),
        ("studies/../../system", 403, "passes only"),
        ("patients", 403, "passes only"),
        (f"studies/{STUDY}/series/x.y/metadata", 403, "passes only"),
        ("studies?PatientName=<script>", 400, "characters a QIDO-RS search does not use"),
    ],
)
def test_the_proxy_passes_only_the_reads_a_viewer_needs(gateway: int, path: str, status: int, message: str) -> None:
    Pacs.seen.clear()
    got, _, body = _get(gateway, f"/ohif/dicomweb/orthanc/{path}", _reader())
    assert got == status and message in json.loads(body)["error"]["message"] and Pacs.seen == []


def test_the_proxy_refuses_writes_and_unknown_endpoints(gateway: int) -> None:
    status, _, body = _get(gateway, "/ohif/dicomweb/elsewhere/studies", _reader())
    assert status == 404 and "no PACS endpoint 'elsewhere' here; configured: orthanc" in body.decode()
    # STOW-RS is a POST: the gateway's POST side serves only the API.
    connection = http.client.HTTPConnection("127.0.0.1", gateway, timeout=30)
    connection.request(
        "POST", "/ohif/dicomweb/orthanc/studies", body=b"x", headers={**_reader(), "Content-Type": "application/json"}
    )
    assert connection.getresponse().status == 404
    connection.close()


@pytest.mark.parametrize("frame", [1, 2], ids=["declared", "counted"])
def test_the_proxy_bounds_the_bytes_it_passes(gateway: int, frame: int) -> None:
    path = f"/ohif/dicomweb/orthanc/studies/{STUDY}/series/{SERIES}/instances/{SOP}/frames/{frame}"
    status, _, body = _get(gateway, path, _reader())
    error = json.loads(body)["error"]
    assert (
        status == 502 and error["status"] == "RESOURCE_EXHAUSTED" and f"larger than {LIMIT} bytes" in error["message"]
    )


def test_the_proxy_bounds_the_time_it_waits(gateway: int) -> None:
    path = f"/ohif/dicomweb/orthanc/studies/{STUDY}/series/{SERIES}/instances/{SOP}/frames/3"
    started = time.monotonic()
    status, _, body = _get(gateway, path, _reader())
    assert status == 504 and "took longer than 2 s" in json.loads(body)["error"]["message"]
    assert time.monotonic() - started < 15  # the PACS would trickle for 20 s: the deadline, not the PACS, ended it


FRAME = f"/ohif/dicomweb/orthanc/studies/{STUDY}/series/{SERIES}/instances/{SOP}/frames"


@pytest.mark.parametrize(
    ("path", "token", "status", "reason", "field"),
    [
        ("/ohif/dicomweb/orthanc/studies", False, 401, "UNAUTHENTICATED", ""),
        ("/ohif/dicomweb/elsewhere/studies", True, 404, "PACS_ENDPOINT_NOT_FOUND", "endpoint"),
        (f"/ohif/dicomweb/orthanc/studies/{STUDY}", True, 403, "PERMISSION_DENIED", ""),
        ("/ohif/dicomweb/orthanc/studies?PatientName=<script>", True, 400, "INVALID_INPUT", "query"),
        (f"{FRAME}/1", True, 502, "PACS_BUDGET_EXCEEDED", ""),
        (f"{FRAME}/3", True, 504, "PACS_DEADLINE_EXCEEDED", ""),
        (f"{FRAME}/4", True, 502, "PACS_ACCESS_DENIED", ""),
        (f"{FRAME}/5", True, 502, "PACS_UNAVAILABLE", ""),
    ],
)
def test_the_proxy_s_refusals_carry_the_api_s_reasons_and_details(
    gateway: int, path: str, token: bool, status: int, reason: str, field: str
) -> None:
    """Each refusal: the catalogue's reason and status as the API's errors carry them (ErrorInfo with the field,
    BadRequest for INVALID_ARGUMENT, RetryInfo and Retry-After exactly where a retry can help)."""
    got, headers, body = _get(gateway, path, _reader() if token else {})
    error = json.loads(body)["error"]
    code = status_for(REASON_BY_NAME[reason].error)
    assert (got, error["code"], error["status"]) == (status, status, code.name), error
    details = {d["@type"].removeprefix("type.googleapis.com/google.rpc."): d for d in error["details"]}
    info = details["ErrorInfo"]
    assert (info["reason"], info["domain"], info.get("metadata", {}).get("field", "")) == (reason, "medsam2", field)
    assert ("BadRequest" in details) == (code is grpc.StatusCode.INVALID_ARGUMENT)
    if "BadRequest" in details:
        assert details["BadRequest"]["fieldViolations"][0]["field"] == field
    retry = code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE) and REASON_BY_NAME[reason].retry
    assert ("RetryInfo" in details) == retry == ("Retry-After" in headers), (details, headers)
    if retry:
        assert int(headers["Retry-After"]) >= float(details["RetryInfo"]["retryDelay"].removesuffix("s"))


def test_cors_is_granted_to_the_listed_origins_only(gateway: int) -> None:
    status, headers, _ = _get(gateway, "/healthz", {"Origin": SITE})
    assert status == 200 and headers["Access-Control-Allow-Origin"] == SITE
    assert "Access-Control-Allow-Origin" not in _get(gateway, "/healthz", {"Origin": "https://evil.example"})[1]
    status, headers, _ = _get(gateway, "/v1/GetServerInfo", {"Origin": SITE}, method="OPTIONS")
    assert status == 204 and "Authorization" in headers["Access-Control-Allow-Headers"]
    assert _get(gateway, "/v1/GetServerInfo", {"Origin": "https://viewer.example.org.evil"}, method="OPTIONS")[0] == 403
    status, headers, _ = _get(gateway, "/ohif/dicomweb/orthanc/studies?limit=1", {**_reader(), "Origin": SITE})
    assert status == 200 and headers["Access-Control-Allow-Origin"] == SITE


@pytest.mark.parametrize("origin", ["*", "https://site.example/path", "viewer.example.org", "https://*.example.org"])
def test_cors_origins_must_be_exact_origins(origin: str) -> None:
    with pytest.raises(ConfigError, match="is not an origin"):
        parse_origins(f"https://ok.example,{origin}")


def test_an_unbuilt_ohif_is_named(tmp_path: Path) -> None:
    site = OhifSite(None, Authenticator().principal_of, root=tmp_path)
    options = GatewayOptions("127.0.0.1", 0, 1 << 20, 1 << 20, ohif=site)
    server = start_gateway(Gateway([], [], title="t", version="v1"), options)
    try:
        status, headers, body = _get(server.server_address[1], "/ohif/")
        error = json.loads(body)["error"]
        assert status == 503 and "OHIF is not installed: run scripts/build_web.sh" in error["message"]
        # A permanent refusal until someone builds it: the catalogue's reason, no RetryInfo, no Retry-After.
        assert [d["reason"] for d in error["details"]] == ["NOT_BUILT"] and "Retry-After" not in headers
    finally:
        server.shutdown()
        server.server_close()
