"""Fetch a published MedSAM2 checkpoint: ``medsam2 checkpoint download NAME --out DIR``.

Part of the serving runtime: it downloads with the standard library's urllib (no requests, no torch; tqdm shows
progress when it is installed) and only imports the project's own errors and settings.  A download goes to a
hidden temporary file in the output folder and is renamed into place only after its size and sha256 check out,
so a failed or interrupted download never leaves a file under the checkpoint's name.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from http.client import HTTPException, HTTPMessage, HTTPResponse
from pathlib import Path
from typing import IO, Protocol

from medsam2.errors import ConfigError, DownloadError, InvalidInput, NotFound, OutputNotWritable
from medsam2.settings import DEFAULT_BASE_URL

RECOMMENDED_CHECKPOINT = "MedSAM2_latest"

CHUNK_BYTES = 1 << 20
_USER_AGENT = "medsam2-serving checkpoint-download"
_PART_SUFFIX = ".part"
# A live download rewrites its part file every few seconds at worst (reads time
# out after timeout_s), so an untouched one this old belongs to a killed run.
_STALE_PART_AGE_S = 15 * 60
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class PublishedCheckpoint:
    """One checkpoint file published in the MedSAM2 Hugging Face repository."""

    name: str
    filename: str
    description: str
    sha256: str | None = None
    """Known sha256 of the file; None where it is not pinned here."""


# The sha256 values are not pinned: Hugging Face states each file's sha256 in
# its X-Linked-ETag header, which download_checkpoint verifies against.
PUBLISHED_CHECKPOINTS: dict[str, PublishedCheckpoint] = {
    c.name: c
    for c in (
        PublishedCheckpoint(
            "MedSAM2_latest",
            "MedSAM2_latest.pt",
            "Recommended. Latest general model, trained on public data plus newly annotated studies.",
        ),
        PublishedCheckpoint("MedSAM2_2411", "MedSAM2_2411.pt", "Base model released in November 2024."),
        PublishedCheckpoint("MedSAM2_US_Heart", "MedSAM2_US_Heart.pt", "Fine-tuned for heart ultrasound video."),
        PublishedCheckpoint(
            "MedSAM2_MRI_LiverLesion",
            "MedSAM2_MRI_LiverLesion.pt",
            "Fine-tuned for liver lesions in MRI.",
        ),
        PublishedCheckpoint("MedSAM2_CTLesion", "MedSAM2_CTLesion.pt", "Fine-tuned for lesions in CT."),
        PublishedCheckpoint(
            "medsam2_FLARE25_RECIST_baseline",
            "medsam2_FLARE25_RECIST_baseline.pt",
            "FLARE25 challenge baseline: lesion segmentation from a RECIST line.",
        ),
    )
}


@dataclass(frozen=True)
class DownloadResult:
    """What download_checkpoint left on disk and how far it could vouch for it."""

    path: Path
    sha256: str
    verified: bool
    """True when the sha256 matched a value from the caller, the registry or the server."""
    bytes: int
    skipped: bool = False
    """True when a matching file was already there and nothing was downloaded."""

    def summary(self) -> str:
        """One human-readable line: where the file is, its size and sha256, and whether it was verified."""
        action = "already present" if self.skipped else "downloaded"
        check = (
            "sha256 verified" if self.verified else "NOT verified: no expected sha256 was known (pass one to check it)"
        )
        return f"{self.path} ({action}, {self.bytes} bytes), sha256 {self.sha256}, {check}"


class _Progress(Protocol):
    def update(self, n: int) -> object: ...

    def close(self) -> object: ...


def list_checkpoints() -> list[PublishedCheckpoint]:
    """Return the published checkpoints, the recommended one first."""
    rest = [c for n, c in PUBLISHED_CHECKPOINTS.items() if n != RECOMMENDED_CHECKPOINT]
    return [PUBLISHED_CHECKPOINTS[RECOMMENDED_CHECKPOINT], *rest]


def resolve_checkpoint(name: str) -> PublishedCheckpoint:
    """Return the published checkpoint called ``name`` (or with that file name); NotFound otherwise."""
    if name in PUBLISHED_CHECKPOINTS:
        return PUBLISHED_CHECKPOINTS[name]
    for ckpt in PUBLISHED_CHECKPOINTS.values():
        if ckpt.filename == name:
            return ckpt
    valid = ", ".join(c.name for c in list_checkpoints())
    raise NotFound(f"no published checkpoint named {name!r}; valid names: {valid}")


def checkpoint_url(ckpt: PublishedCheckpoint, base_url: str = DEFAULT_BASE_URL) -> str:
    """Return the URL of ``ckpt`` under ``base_url``."""
    scheme = urllib.parse.urlsplit(base_url).scheme
    if scheme not in ("http", "https"):
        raise ConfigError(f"checkpoint base URL must be http(s), got {base_url!r}")
    return f"{base_url.rstrip('/')}/{urllib.parse.quote(ckpt.filename)}"


def parse_sha256_etag(value: str | None) -> str | None:
    """Return the sha256 an ETag header carries (quoted, W/-prefixed or bare), or None."""
    if not value:
        return None
    tag = value.strip()
    if tag[:2].upper() == "W/":
        tag = tag[2:]
    tag = tag.strip().strip('"').lower()
    return tag if _SHA256_RE.fullmatch(tag) else None


def file_sha256(path: Path) -> str:
    """Return the hex sha256 of the file at ``path``."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def download_checkpoint(
    name: str,
    out_dir: Path,
    *,
    base_url: str = DEFAULT_BASE_URL,
    expected_sha256: str | None = None,
    timeout_s: float = 30.0,
    progress: bool = True,
) -> DownloadResult:
    """Download published checkpoint ``name`` into ``out_dir`` and verify it; skip if already there."""
    ckpt = resolve_checkpoint(name)
    url = checkpoint_url(ckpt, base_url)
    expected = _normalize_expected(expected_sha256) or ckpt.sha256
    out_dir = Path(out_dir)
    final = out_dir / ckpt.filename
    _ensure_dir(out_dir)

    local_sha = file_sha256(final) if expected and final.is_file() else None
    if expected and local_sha == expected:
        return DownloadResult(final, expected, True, final.stat().st_size, skipped=True)

    _remove_stale_parts(out_dir, ckpt.filename)
    # Creating the part file is the writability check, done before any network.
    tmp = _create_part_file(out_dir, ckpt.filename)
    try:
        return _fetch_into(url, ckpt, final, tmp, expected, timeout_s, progress)
    finally:
        tmp.unlink(missing_ok=True)


def _normalize_expected(value: str | None) -> str | None:
    if value is None:
        return None
    sha = value.strip().lower()
    if not _SHA256_RE.fullmatch(sha):
        raise InvalidInput(f"expected sha256 must be 64 hex digits, got {value!r}")
    return sha


def _ensure_dir(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputNotWritable(f"cannot create output folder {out_dir}: {e}") from e
    if not out_dir.is_dir():
        raise OutputNotWritable(f"output path {out_dir} exists and is not a folder")


def _create_part_file(out_dir: Path, filename: str) -> Path:
    try:
        fd, name = tempfile.mkstemp(prefix=f".{filename}.", suffix=_PART_SUFFIX, dir=out_dir)
    except OSError as e:
        raise OutputNotWritable(f"output folder {out_dir} is not writable: {e}") from e
    os.close(fd)
    return Path(name)


def _remove_stale_parts(out_dir: Path, filename: str) -> None:
    # finally-blocks clean up after errors and Ctrl-C, but not after SIGKILL or
    # a power cut; those leave ~156 MB hidden files that nothing else removes.
    cutoff = time.time() - _STALE_PART_AGE_S
    for part in out_dir.glob(f".{filename}.*{_PART_SUFFIX}"):
        try:
            if part.stat().st_mtime < cutoff:
                part.unlink()
        except OSError:
            pass  # gone already, or not ours to remove: harmless either way


class _RecordingRedirectHandler(urllib.request.HTTPRedirectHandler):
    """Keeps the headers of redirect responses.

    Hugging Face states an LFS file's sha256 and size (X-Linked-ETag,
    X-Linked-Size) on the 302 that points at its CDN, not on the CDN's answer.
    """

    def __init__(self) -> None:
        self.redirect_headers: list[HTTPMessage] = []

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        self.redirect_headers.append(headers)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _fetch_into(
    url: str,
    ckpt: PublishedCheckpoint,
    final: Path,
    tmp: Path,
    expected: str | None,
    timeout_s: float,
    progress: bool,
) -> DownloadResult:
    redirects = _RecordingRedirectHandler()
    with _open(url, ckpt, redirects, timeout_s) as response:
        all_headers = [*redirects.redirect_headers, response.headers]
        server_sha = _server_sha256(all_headers)
        if expected is None and server_sha and final.is_file() and file_sha256(final) == server_sha:
            return DownloadResult(final, server_sha, True, final.stat().st_size, skipped=True)
        size = _announced_size(response.headers, redirects.redirect_headers)
        got_sha, got_bytes = _stream_to_file(response, tmp, url, ckpt, size, timeout_s, progress)

    if size is not None and got_bytes != size:
        raise DownloadError(
            f"download of {url} was truncated: expected {size} bytes, received {got_bytes}; "
            f"nothing was written to {final}. Try again."
        )
    want = expected or server_sha
    if want is not None and got_sha != want:
        source = "the expected value" if expected else "the server's ETag"
        raise DownloadError(
            f"sha256 mismatch for {url}: got {got_sha}, {source} is {want}; "
            f"the file was discarded and nothing was written to {final}"
        )
    _install(tmp, final)
    return DownloadResult(final, got_sha, want is not None, got_bytes)


def _open(url: str, ckpt: PublishedCheckpoint, redirects: _RecordingRedirectHandler, timeout_s: float) -> HTTPResponse:
    opener = urllib.request.build_opener(redirects)
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    try:
        return opener.open(request, timeout=timeout_s)
    except urllib.error.HTTPError as e:
        e.close()
        raise DownloadError(_http_error_message(url, e.code, e.reason)) from e
    except (urllib.error.URLError, OSError, HTTPException) as e:
        raise DownloadError(_unreachable_message(url, ckpt, e)) from e


def _http_error_message(url: str, code: int, reason: str) -> str:
    hint = {
        404: "the file is not there: check the checkpoint name and the base URL",
        401: "the server wants credentials: check the base URL or the mirror's access rules",
        403: "the server refused access: check the base URL or the mirror's access rules",
    }.get(code, "the server could not deliver it; try again later")
    return f"{url} answered HTTP {code} {reason}: {hint}"


def _unreachable_message(url: str, ckpt: PublishedCheckpoint, e: BaseException) -> str:
    reason = e.reason if isinstance(e, urllib.error.URLError) else e
    host = urllib.parse.urlsplit(url).netloc
    return (
        f"cannot reach {host} to download {url} ({reason}). This machine looks offline, or the "
        f"host is blocked or down. Download {ckpt.filename} by other means (from that URL on a "
        f"machine with internet access, or from a mirror) and pass the file with --checkpoint PATH."
    )


def _server_sha256(headers: list[HTTPMessage]) -> str | None:
    # X-Linked-ETag is the LFS sha256 by definition; a plain ETag only counts
    # on the final answer, and only when it looks like a sha256.
    for h in headers:
        if sha := parse_sha256_etag(h.get("X-Linked-ETag")):
            return sha
    return parse_sha256_etag(headers[-1].get("ETag"))


def _announced_size(final_headers: HTTPMessage, redirect_headers: list[HTTPMessage]) -> int | None:
    for value in [final_headers.get("Content-Length")] + [h.get("X-Linked-Size") for h in redirect_headers]:
        if value and value.strip().isdigit():
            return int(value)
    return None


def _stream_to_file(
    response: IO[bytes],
    tmp: Path,
    url: str,
    ckpt: PublishedCheckpoint,
    size: int | None,
    timeout_s: float,
    progress: bool,
) -> tuple[str, int]:
    digest = hashlib.sha256()
    received = 0
    bar = _make_progress(ckpt.filename, size) if progress else None
    try:
        with tmp.open("wb") as out:
            while chunk := _read_chunk(response, url, ckpt, received, size, timeout_s):
                _write_chunk(out, chunk, tmp)
                digest.update(chunk)
                received += len(chunk)
                if bar is not None:
                    bar.update(len(chunk))
            _flush(out, tmp)
    finally:
        if bar is not None:
            bar.close()
    return digest.hexdigest(), received


def _read_chunk(
    response: IO[bytes], url: str, ckpt: PublishedCheckpoint, received: int, size: int | None, timeout_s: float
) -> bytes:
    # http.client returns b"" rather than raising when the peer closes early,
    # so truncation is caught by the size check after the loop, not here.
    try:
        return response.read(CHUNK_BYTES)
    except TimeoutError as e:
        of = f" of {size}" if size is not None else ""
        raise DownloadError(
            f"download of {url} stalled: no data for {timeout_s:g} s after {received}{of} bytes; "
            f"the connection may have dropped. Try again, or download {ckpt.filename} by other "
            f"means and pass the file with --checkpoint PATH."
        ) from e
    except (OSError, HTTPException) as e:
        raise DownloadError(f"download of {url} broke off after {received} bytes: {e!r}; try again") from e


def _write_chunk(out: IO[bytes], chunk: bytes, tmp: Path) -> None:
    try:
        out.write(chunk)
    except OSError as e:
        raise OutputNotWritable(f"cannot write {tmp} (disk full?): {e}") from e


def _flush(out: IO[bytes], tmp: Path) -> None:
    # fsync before the rename, so a crash cannot leave the final name pointing
    # at a file whose data never reached the disk.
    try:
        out.flush()
        os.fsync(out.fileno())
    except OSError as e:
        raise OutputNotWritable(f"cannot write {tmp}: {e}") from e


def _install(tmp: Path, final: Path) -> None:
    try:
        # mkstemp makes the file 0600; a checkpoint is public data that a server
        # running as another user must be able to read.
        os.chmod(tmp, 0o644)
        os.replace(tmp, final)
    except OSError as e:
        raise OutputNotWritable(f"cannot move the download into place at {final}: {e}") from e
    _fsync_dir(final.parent)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # some filesystems do not allow opening a folder; the rename still happened
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _make_progress(filename: str, total: int | None) -> _Progress:
    try:
        from tqdm import tqdm
    except ImportError:
        return _StderrProgress(filename, total)
    return tqdm(total=total, desc=filename, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr, leave=True)


class _StderrProgress:
    """Plain progress line on stderr for when tqdm is not installed."""

    def __init__(self, filename: str, total: int | None, interval_s: float = 0.5) -> None:
        self._filename = filename
        self._total = total
        self._done = 0
        self._interval_s = interval_s
        self._last = 0.0

    def update(self, n: int) -> None:
        self._done += n
        now = time.monotonic()
        if now - self._last >= self._interval_s:
            self._last = now
            self._write("\r")

    def close(self) -> None:
        self._write("\r")
        sys.stderr.write("\n")
        sys.stderr.flush()

    def _write(self, prefix: str) -> None:
        mb = self._done / 1e6
        if self._total:
            line = f"{self._filename}: {mb:.1f}/{self._total / 1e6:.1f} MB ({100 * self._done // self._total}%)"
        else:
            line = f"{self._filename}: {mb:.1f} MB"
        sys.stderr.write(prefix + line)
        sys.stderr.flush()
