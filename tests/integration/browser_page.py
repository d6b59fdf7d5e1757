"""Drive the web viewer in Debian's headless Chromium (Playwright without its own browsers), against `medsam2 serve`."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = REPO / "artifacts" / "browser"
# The flags a CI box needs: no sandbox (containers), no GPU, nothing that phones home.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class Service:
    """`medsam2 serve` with its HTTP gateway, as a child process (so a test can kill it mid-stream)."""

    def __init__(self, graphs: Path, *, token: str, log: Path, env: dict[str, str] | None = None) -> None:
        """``env``: extra settings, e.g. ``MEDSAM2_PACS_ORTHANC_URL``."""
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO / "services"), str(REPO / "export")]),
            "MEDSAM2_THREADS": "2",
            "MEDSAM2_LOG_LEVEL": "INFO",
            **(env or {}),
        }
        self.log = log
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "medsam2.cli.main",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--metrics-port",
                "0",
                "--http-port",
                str(_free_port()),
                "--model-repository",
                str(graphs),
                "--auth-token",
                token,
            ],
            stdout=subprocess.PIPE,
            stderr=log.open("wb"),
            env=env,
            text=True,
        )
        self.url = self.grpc_target = ""
        deadline = time.monotonic() + 60
        while not self.url:
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError(f"medsam2 serve exited ({self.process.wait()}): {log.read_text()[-2000:]}")
            if match := re.search(r"listening on (\S+:\d+)", line):
                self.grpc_target = match.group(1)
            if match := re.search(r"web viewer at (\S+)", line):
                self.url = match.group(1)
            if time.monotonic() > deadline:
                raise RuntimeError("medsam2 serve did not print its URL within 60 s")

    def kill(self) -> None:
        """Gone at once, as a crash or a pulled cable would leave it."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)

    def stop(self) -> None:
        """Stop it (SIGTERM drains; then kill)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(playwright, user_data_dir: Path):
    """A fresh Chromium profile; Playwright's own browser download is never used."""
    return playwright.chromium.launch_persistent_context(
        str(user_data_dir),
        executable_path=CHROMIUM,
        headless=True,
        args=CHROMIUM_FLAGS,
        viewport={"width": 1100, "height": 720},
    )


def overlay_pixels(png: bytes, colour: str = "red") -> int:
    """Pixels of a screenshot tinted by an object's overlay: red (object 1) or green (object 2); the study is grey."""
    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    main = {"red": 0, "green": 1}[colour]
    others = [c for c in range(3) if c != main]
    return int(((rgb[..., main] - rgb[..., others[0]] > 60) & (rgb[..., main] - rgb[..., others[1]] > 60)).sum())


def drag(page, start: tuple[float, float], end: tuple[float, float]) -> None:
    """A mouse drag in small steps, as a hand makes it."""
    page.mouse.move(*start)
    page.mouse.down()
    for step in range(1, 6):
        page.mouse.move(start[0] + (end[0] - start[0]) * step / 5, start[1] + (end[1] - start[1]) * step / 5)
    page.mouse.up()


def build_bundle() -> bool:
    """Build the page with scripts/build_web.sh; False when it is not built and npm is missing."""
    app = REPO / "services" / "medsam2" / "gateway" / "static" / "app.js"
    if shutil.which("npm") is None and not app.is_file():
        return False
    subprocess.run([str(REPO / "scripts" / "build_web.sh")], check=True, timeout=300)
    return app.is_file()


def go_to_slice(page, index: int) -> None:
    """Move the slice slider (as dragging it does)."""
    page.eval_on_selector("#slice", "(el, s) => { el.value = String(s); el.dispatchEvent(new Event('input')); }", index)
    page.wait_for_selector(f"body[data-slice='{index}']")
