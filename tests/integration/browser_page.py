"""Drive the web viewer in Debian's headless Chromium (Playwright without its own browsers), against `medsam2 serve`."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import numpy as np

import patience
from serve_process import ServeProcess

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


class Service(ServeProcess):
    """`medsam2 serve` with its HTTP gateway and a bearer token, as a child process (a test can kill it mid-stream)."""

    def __init__(self, graphs: Path, *, token: str, log: Path, env: dict[str, str] | None = None) -> None:
        """``env``: extra settings, e.g. ``MEDSAM2_PACS_ORTHANC_URL``."""
        settings = {"MEDSAM2_LOG_LEVEL": "INFO", **(env or {})}
        super().__init__(graphs, log=log, args=["--auth-token", token], env=settings, http=True)


def launch(playwright, user_data_dir: Path):
    """A fresh Chromium profile; Playwright's own browser download is never used."""
    context = playwright.chromium.launch_persistent_context(
        str(user_data_dir),
        executable_path=CHROMIUM,
        headless=True,
        args=CHROMIUM_FLAGS,
        viewport={"width": 1100, "height": 720},
    )
    # Every wait without its own bound (Playwright's default is 30 s) is a hang guard sized for the slow machine.
    context.set_default_timeout(patience.BROWSER_STEP_MS)
    return context


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
    subprocess.run([str(REPO / "scripts" / "build_web.sh")], check=True, timeout=patience.COMMAND_S)
    return app.is_file()


def go_to_slice(page, index: int) -> None:
    """Move the slice slider (as dragging it does)."""
    page.eval_on_selector("#slice", "(el, s) => { el.value = String(s); el.dispatchEvent(new Event('input')); }", index)
    page.wait_for_selector(f"body[data-slice='{index}']")
