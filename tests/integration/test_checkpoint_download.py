"""Tests of medsam2.models.download against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from medsam2.errors import ConfigError, DownloadError, InvalidInput, NotFound, OutputNotWritable
from medsam2.models import download as cd

NAME = "MedSAM2_latest"
FILENAME = "MedSAM2_latest.pt"
REPO_PATH = "/wanglab/MedSAM2/resolve/main"
# Several chunks plus a ragged tail, so the streaming loop runs more than once.
BODY = hashlib.sha256(b"seed").digest() * (3 * cd.CHUNK_BYTES // 32) + b"tail-bytes"
BODY_SHA = hashlib.sha256(BODY).hexdigest()
OTHER_SHA = hashlib.sha256(b"something else").hexdigest()


@dataclass
class Route:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    send_bytes: int | None = None
    """Send only this many body bytes (Content-Length still announces all of them)."""
    stall: threading.Event | None = None
    """After sending, hold the connection open until this is set."""


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        route = self.server.routes.get(self.path, Route(status=404, body=b"not found"))
        self.send_response(route.status)
        if "Content-Length" not in route.headers:
            self.send_header("Content-Length", str(len(route.body)))
        for key, value in route.headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(route.body[: route.send_bytes])
        self.wfile.flush()
        if route.stall is not None:
            route.stall.wait(10)
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep pytest output clean


class _Server(ThreadingHTTPServer):
    routes: dict[str, Route]
    requests: list[str]


@dataclass
class Fixture:
    httpd: _Server

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{REPO_PATH}"

    def serve(self, filename: str = FILENAME, **route: object) -> Route:
        r = Route(**route)  # type: ignore[arg-type]
        self.httpd.routes[f"{REPO_PATH}/{filename}"] = r
        return r

    @property
    def requests(self) -> list[str]:
        return self.httpd.requests


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # A proxy from the environment would send requests for 127.0.0.1 elsewhere.
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def server() -> Iterator[Fixture]:
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.routes, httpd.requests = {}, []
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield Fixture(httpd)
    finally:
        for route in httpd.routes.values():
            if route.stall is not None:
                route.stall.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "ckpts"


def closed_port() -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def names_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def download(server: Fixture, out: Path, **kwargs: object) -> cd.DownloadResult:
    kwargs.setdefault("progress", False)
    return cd.download_checkpoint(NAME, out, base_url=server.base_url, timeout_s=5, **kwargs)  # type: ignore[arg-type]


# --- successful downloads and where the sha256 comes from -----------------------------


def test_hugging_face_style_redirect_verified_by_x_linked_etag(server: Fixture, out: Path) -> None:
    # As on huggingface.co: the sha256 is on the 302, the CDN's own ETag is an md5.
    server.serve(
        status=302,
        headers={"Location": "/cdn/blob", "X-Linked-ETag": f'"{BODY_SHA}"', "X-Linked-Size": str(len(BODY))},
    )
    server.httpd.routes["/cdn/blob"] = Route(body=BODY, headers={"ETag": '"0123456789abcdef0123456789abcdef"'})

    result = download(server, out)

    assert result == cd.DownloadResult(out / FILENAME, BODY_SHA, True, len(BODY))
    assert (out / FILENAME).read_bytes() == BODY
    assert names_in(out) == [FILENAME]
    assert (out / FILENAME).stat().st_mode & 0o777 == 0o644
    assert server.requests == [f"{REPO_PATH}/{FILENAME}", "/cdn/blob"]


@pytest.mark.parametrize("etag", [BODY_SHA, f'"{BODY_SHA}"', f'W/"{BODY_SHA}"', f'"{BODY_SHA.upper()}"'])
def test_verified_by_etag_header_in_its_forms(server: Fixture, out: Path, etag: str) -> None:
    server.serve(body=BODY, headers={"ETag": etag})
    result = download(server, out)
    assert (result.sha256, result.verified, result.bytes) == (BODY_SHA, True, len(BODY))
    assert names_in(out) == [FILENAME]


def test_verified_by_expected_sha256_without_header(server: Fixture, out: Path) -> None:
    server.serve(body=BODY)
    result = download(server, out, expected_sha256=f"  {BODY_SHA.upper()} ")
    assert result.verified and result.sha256 == BODY_SHA
    assert (out / FILENAME).read_bytes() == BODY


def test_verified_by_registry_sha256(server: Fixture, out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pinned = dataclasses.replace(cd.PUBLISHED_CHECKPOINTS[NAME], sha256=BODY_SHA)
    monkeypatch.setitem(cd.PUBLISHED_CHECKPOINTS, NAME, pinned)
    server.serve(body=BODY)
    assert download(server, out).verified


def test_no_checksum_known_is_reported_unverified(server: Fixture, out: Path) -> None:
    # A 40-hex ETag (a git blob sha1) is not a sha256 and must not count as one.
    server.serve(body=BODY, headers={"ETag": '"' + "a" * 40 + '"'})
    result = download(server, out)
    assert (result.sha256, result.verified) == (BODY_SHA, False)
    assert (out / FILENAME).read_bytes() == BODY
    assert "NOT verified" in result.summary() and BODY_SHA in result.summary()


def test_file_name_is_accepted_as_name(server: Fixture, out: Path) -> None:
    server.serve(body=BODY, headers={"ETag": BODY_SHA})
    result = cd.download_checkpoint(FILENAME, out, base_url=server.base_url + "/", progress=False)
    assert result.path == out / FILENAME and result.verified


# --- failures leave nothing under the final name -------------------------------------


def test_expected_sha256_mismatch_discards_the_file(server: Fixture, out: Path) -> None:
    server.serve(body=BODY, headers={"ETag": BODY_SHA})
    with pytest.raises(DownloadError, match="sha256 mismatch") as info:
        download(server, out, expected_sha256=OTHER_SHA)
    assert BODY_SHA in str(info.value) and OTHER_SHA in str(info.value)
    assert names_in(out) == []


def test_header_sha256_mismatch_discards_the_file(server: Fixture, out: Path) -> None:
    server.serve(body=BODY, headers={"X-Linked-ETag": f'"{OTHER_SHA}"'})
    with pytest.raises(DownloadError, match="server's ETag"):
        download(server, out)
    assert names_in(out) == []


def test_truncated_body_names_both_sizes(server: Fixture, out: Path) -> None:
    sent = len(BODY) - 1000
    server.serve(body=BODY, send_bytes=sent)
    with pytest.raises(DownloadError, match="truncated") as info:
        download(server, out)
    assert f"expected {len(BODY)} bytes, received {sent}" in str(info.value)
    assert names_in(out) == []


@pytest.mark.parametrize(("status", "text"), [(404, "HTTP 404 Not Found"), (500, "HTTP 500")])
def test_http_error_names_the_status(server: Fixture, out: Path, status: int, text: str) -> None:
    server.serve(status=status, body=b"nope")
    with pytest.raises(DownloadError, match=text) as info:
        download(server, out)
    assert f"{server.base_url}/{FILENAME}" in str(info.value)
    assert names_in(out) == []


def test_offline_names_url_and_suggests_checkpoint_flag(out: Path) -> None:
    base_url = f"http://127.0.0.1:{closed_port()}{REPO_PATH}"
    with pytest.raises(DownloadError) as info:
        cd.download_checkpoint(NAME, out, base_url=base_url, timeout_s=5, progress=False)
    message = str(info.value)
    assert f"{base_url}/{FILENAME}" in message
    assert "offline" in message and "cannot reach" in message
    assert "by other means" in message and "--checkpoint" in message
    assert names_in(out) == []


def test_stalled_download_times_out_and_cleans_up(server: Fixture, out: Path) -> None:
    server.serve(body=BODY, send_bytes=1000, stall=threading.Event())
    start = time.monotonic()
    with pytest.raises(DownloadError, match="stalled"):
        cd.download_checkpoint(NAME, out, base_url=server.base_url, timeout_s=0.5, progress=False)
    assert time.monotonic() - start < 5
    assert names_in(out) == []


def test_interrupt_mid_download_leaves_nothing(server: Fixture, out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class CtrlC:
        def update(self, n: int) -> None:
            raise KeyboardInterrupt

        def close(self) -> None:
            pass

    monkeypatch.setattr(cd, "_make_progress", lambda filename, total: CtrlC())
    server.serve(body=BODY)
    with pytest.raises(KeyboardInterrupt):
        download(server, out, progress=True)
    assert names_in(out) == []


# --- refusals before any network ----------------------------------------------------


def test_unknown_name_lists_valid_names(server: Fixture, out: Path) -> None:
    with pytest.raises(NotFound) as info:
        cd.download_checkpoint("MedSAM3", out, base_url=server.base_url, progress=False)
    for name in cd.PUBLISHED_CHECKPOINTS:
        assert name in str(info.value)
    assert server.requests == [] and names_in(out) == []


@pytest.mark.parametrize("below", ["", "sub/dir"])
def test_unwritable_out_dir(server: Fixture, tmp_path: Path, below: str) -> None:
    # Tests run as root, which chmod does not stop; a regular file in the path does.
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"x")
    target = blocker / below if below else blocker
    server.serve(body=BODY)
    with pytest.raises(OutputNotWritable) as info:
        download(server, target)
    assert str(blocker) in str(info.value)
    assert server.requests == []


def test_malformed_expected_sha256_and_base_url_are_refused(server: Fixture, out: Path) -> None:
    with pytest.raises(InvalidInput):
        download(server, out, expected_sha256="abc123")
    with pytest.raises(ConfigError):
        cd.download_checkpoint(NAME, out, base_url="ftp://mirror/medsam2", progress=False)
    assert server.requests == []


# --- idempotence -------------------------------------------------------------------


def test_present_file_matching_expected_is_skipped_without_network(server: Fixture, out: Path) -> None:
    out.mkdir()
    (out / FILENAME).write_bytes(BODY)
    result = download(server, out, expected_sha256=BODY_SHA)
    assert result == cd.DownloadResult(out / FILENAME, BODY_SHA, True, len(BODY), skipped=True)
    assert server.requests == []
    assert "already present" in result.summary()


def test_present_file_matching_server_sha256_is_kept(server: Fixture, out: Path) -> None:
    out.mkdir()
    (out / FILENAME).write_bytes(BODY)
    old = os.stat(out / FILENAME)
    server.serve(body=BODY, headers={"X-Linked-ETag": BODY_SHA})
    result = download(server, out)
    assert result.skipped and result.verified
    new = os.stat(out / FILENAME)
    assert (new.st_ino, new.st_mtime_ns) == (old.st_ino, old.st_mtime_ns)
    assert names_in(out) == [FILENAME]


def test_present_corrupt_file_is_replaced(server: Fixture, out: Path) -> None:
    out.mkdir()
    (out / FILENAME).write_bytes(b"corrupt")
    server.serve(body=BODY)
    result = download(server, out, expected_sha256=BODY_SHA)
    assert result.verified and not result.skipped
    assert (out / FILENAME).read_bytes() == BODY


def test_stale_part_files_of_killed_runs_are_removed(server: Fixture, out: Path) -> None:
    out.mkdir()
    stale, fresh = out / f".{FILENAME}.dead{cd._PART_SUFFIX}", out / f".{FILENAME}.live{cd._PART_SUFFIX}"
    stale.write_bytes(b"old")
    fresh.write_bytes(b"new")
    hour_ago = time.time() - 3600
    os.utime(stale, (hour_ago, hour_ago))
    server.serve(body=BODY, headers={"ETag": BODY_SHA})
    download(server, out)
    # A recent part file may belong to a concurrent download, so it stays.
    assert names_in(out) == sorted([FILENAME, fresh.name])


# --- progress, registry and helpers ---------------------------------------------------


def test_progress_with_tqdm(server: Fixture, out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("tqdm")
    server.serve(body=BODY, headers={"ETag": BODY_SHA})
    download(server, out, progress=True)
    captured = capsys.readouterr()
    assert FILENAME in captured.err and captured.out == ""


def test_progress_without_tqdm(
    server: Fixture, out: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)  # makes `from tqdm import tqdm` fail
    server.serve(body=BODY, headers={"ETag": BODY_SHA})
    download(server, out, progress=True)
    captured = capsys.readouterr()
    assert f"{FILENAME}: {len(BODY) / 1e6:.1f}/{len(BODY) / 1e6:.1f} MB (100%)" in captured.err
    assert captured.out == ""


def test_registry_lists_the_published_files() -> None:
    assert {c.filename for c in cd.PUBLISHED_CHECKPOINTS.values()} == {
        "MedSAM2_latest.pt",
        "MedSAM2_2411.pt",
        "MedSAM2_US_Heart.pt",
        "MedSAM2_MRI_LiverLesion.pt",
        "MedSAM2_CTLesion.pt",
        "medsam2_FLARE25_RECIST_baseline.pt",
    }
    assert all(name == c.name for name, c in cd.PUBLISHED_CHECKPOINTS.items())
    assert cd.list_checkpoints()[0].name == cd.RECOMMENDED_CHECKPOINT
    assert cd.checkpoint_url(cd.PUBLISHED_CHECKPOINTS[NAME]) == (
        "https://huggingface.co/wanglab/MedSAM2/resolve/main/MedSAM2_latest.pt"
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        cd.PUBLISHED_CHECKPOINTS[NAME].sha256 = BODY_SHA  # type: ignore[misc]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (BODY_SHA, BODY_SHA),
        (f'"{BODY_SHA}"', BODY_SHA),
        (f'W/"{BODY_SHA}"', BODY_SHA),
        (f"w/{BODY_SHA.upper()}", BODY_SHA),
        ('"' + "a" * 40 + '"', None),
        ('"' + "g" * 64 + '"', None),
        ("", None),
        (None, None),
    ],
)
def test_parse_sha256_etag(header: str | None, expected: str | None) -> None:
    assert cd.parse_sha256_etag(header) == expected


def test_module_imports_neither_torch_nor_requests() -> None:
    code = "import sys, medsam2.models.download; bad = {'torch', 'requests'} & set(sys.modules); assert not bad, bad"
    env = {**os.environ, "PYTHONPATH": str(Path(cd.__file__).parents[2])}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
