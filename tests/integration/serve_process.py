"""`medsam2 serve` as a child process on free loopback ports, for tests that need a real process to kill or signal.

It waits until the server says where it listens (its gRPC address, and the web viewer's URL when ``http`` is
asked for) and always stops it: ``stop`` drains with SIGTERM (then kills), ``kill`` is a crash.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import patience

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def medsam2_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment with the repository's packages on the path, two threads, and ``extra`` settings."""
    paths = [str(REPO / "services"), str(REPO / "export"), os.environ.get("PYTHONPATH", "")]
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in paths if p),
        "MEDSAM2_THREADS": "2",
        **(extra or {}),
    }


class ServeProcess:
    """One `medsam2 serve` child process; ``target`` is its gRPC address, ``url`` its web viewer (with ``http``)."""

    def __init__(
        self,
        graphs: Path | str,
        *,
        log: Path,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        http: bool = False,
        start_timeout_s: float = patience.SERVER_START_S,
    ) -> None:
        command = [sys.executable, "-m", "medsam2.cli.main", "serve", "--host", "127.0.0.1", "--port", "0"]
        command += ["--metrics-port", "0", "--model-repository", str(graphs), *args]
        if http:
            command += ["--http-port", str(free_port())]
        self.log = log
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=log.open("wb"), env=medsam2_environment(env), text=True
        )
        self.target = self.url = ""
        deadline = time.monotonic() + start_timeout_s
        try:
            while not self.target or (http and not self.url):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"medsam2 serve did not start within {start_timeout_s:g} s")
                line = self.process.stdout.readline() if self.process.stdout else ""
                if not line:
                    raise RuntimeError(f"medsam2 serve exited ({self.process.wait()})")
                if match := re.search(r"listening on (\S+:\d+)", line):
                    self.target = match.group(1)
                if match := re.search(r"web viewer at (\S+)", line):
                    self.url = match.group(1)
        except RuntimeError as exc:
            self.kill()
            raise RuntimeError(f"{exc}: {log.read_text(errors='replace')[-3000:]}") from None

    @property
    def grpc_target(self) -> str:
        """The gRPC address (HOST:PORT)."""
        return self.target

    def kill(self) -> None:
        """Gone at once (SIGKILL), as a crash or a pulled cable would leave it."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(30)
        if self.process.stdout is not None:
            self.process.stdout.close()

    def stop(self, grace_s: float = 30.0) -> None:
        """SIGTERM (the server drains its streams), then SIGKILL after ``grace_s``."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
