"""Throwaway certificates for TLS tests, made by openssl: one CA, one server certificate, client certificates."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl makes the test certificates")
SERVER_SAN = "subjectAltName=DNS:localhost,IP:127.0.0.1"


def _openssl(folder: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)


def make_certificates(folder: Path, *, server: str = "server", clients: Sequence[str] = ()) -> Path:
    """``ca.pem``; ``<server>.pem``/``.key`` valid for localhost and 127.0.0.1; ``<client>.pem``/``.key`` with
    CN=<client> for each client. Returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    _openssl(folder, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
             "-keyout", "ca.key", "-out", "ca.pem")  # fmt: skip
    (folder / "server.ext").write_text(SERVER_SAN + "\n")
    for name in (server, *clients):
        _openssl(folder, "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
                 "-out", f"{name}.csr")  # fmt: skip
        san = ["-extfile", "server.ext"] if name == server else []
        _openssl(folder, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "1", "-out", f"{name}.pem", *san)  # fmt: skip
    return folder
