"""The web viewer in a real browser (Debian's headless Chromium) against a running `medsam2 serve`.

One study, one session: sign in, open a NIfTI, drag a box on the key slice, propagate, check the overlay's pixels on
the key slice and on a propagated slice, add a negative click and check the overlay changes, propagate again; then
a DICOM folder opens; the bad inputs (a file that is not an image, a wrong token, the server gone mid-propagation) each show a message.
Screenshots go to artifacts/browser/ (gitignored). The page's strict CSP forbids eval, so every wait is a selector
or a text match (Playwright's string predicates would be refused, which is part of what this checks).
"""  # noqa: E501

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom.data
import pytest

import patience
from browser_page import ARTIFACTS, CHROMIUM, REPO, Service, drag, go_to_slice, launch, overlay_pixels
from medsam2_export.parity import synthetic_volume

playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the dev extra)")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (scripts/test_deps.sh)")

TOKEN = "browser-test-token"
SLICES, ROWS, COLS = 6, 72, 84
KEY = SLICES // 2
# A real 5-slice CT series (16 x 16) that ships with pydicom.
CT5N = Path(pydicom.data.__file__).parent / "test_files" / "dicomdirtests" / "98892001" / "CT5N"


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    frames, boxes = synthetic_volume(seed=14, slices=SLICES, height=ROWS, width=COLS)
    path = tmp_path_factory.mktemp("study") / "study.nii.gz"
    # NIfTI keeps columns fastest: the array is [x, y, z].
    nib.save(nib.Nifti1Image(np.ascontiguousarray(frames.transpose(2, 1, 0)), np.diag([0.7, 0.7, 2.5, 1.0])), path)
    return path, boxes


@pytest.fixture(scope="module")
def bundle() -> None:
    if shutil.which("npm") is None and not (REPO / "services" / "medsam2" / "gateway" / "static" / "app.js").is_file():
        pytest.skip("the page is not built and npm is missing (node 20 and npm build it: scripts/build_web.sh)")
    subprocess.run([str(REPO / "scripts" / "build_web.sh")], check=True, timeout=patience.COMMAND_S)
    assert (REPO / "services" / "medsam2" / "gateway" / "static" / "app.js").is_file()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with playwright_api.sync_playwright() as playwright:
        context = launch(playwright, tmp_path_factory.mktemp("chromium-profile"))
        yield context
        context.close()


@pytest.fixture
def page(browser, bundle):
    page = browser.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("console", lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None)
    yield page
    page.close()
    assert not problems, problems


def _sign_in(page, service: Service, token: str = TOKEN) -> None:
    page.goto(service.url)
    page.wait_for_selector("body[data-ready=true]")
    page.fill("#token", token)
    page.click("#signin-button")


def _status(page) -> str:
    return page.inner_text("#status")


def _canvas(page) -> bytes:
    return page.locator("#gl").screenshot()


def _open_and_box(page, study) -> None:
    path, boxes = study
    page.set_input_files("#file", str(path))
    page.wait_for_selector("body[data-session]", timeout=patience.BROWSER_STEP_MS)
    go_to_slice(page, KEY)
    _box(page, boxes[0])


def _box(page, box, object_id: int = 1) -> None:
    start = page.evaluate("([x, y]) => window.medsam2Viewer.voxelToPage(x, y)", [box.x0, box.y0])
    end = page.evaluate("([x, y]) => window.medsam2Viewer.voxelToPage(x, y)", [box.x1 - 1, box.y1 - 1])
    drag(page, start, end)
    page.locator("#status", has_text=f"object {object_id} segmented there").wait_for(timeout=patience.BROWSER_STEP_MS)


def _propagate(page, *, state: str = "done") -> None:
    page.click("#propagate")
    page.wait_for_selector(f"body[data-propagation={state}]", timeout=patience.BROWSER_PROPAGATION_MS)


def test_box_propagate_correct_in_the_browser(graphs, study, page, tmp_path: Path) -> None:
    service = Service(graphs["present"], token=TOKEN, log=tmp_path / "serve.log")
    try:
        _sign_in(page, service)
        page.wait_for_selector("body[data-auth=ok]")
        # The API has StoreResult, but this server has no PACS endpoint (GetServerInfo): the page hides the button.
        with urllib.request.urlopen(service.url + "openapi.json", timeout=10) as answer:
            assert "/v1/StoreResult" in json.load(answer)["paths"]
        page.wait_for_selector("#server-info:has-text('capabilities')", state="attached")
        assert page.locator("#store").is_hidden()
        _open_and_box(page, study)
        key_after_box = overlay_pixels(_canvas(page))
        assert key_after_box > 100, "the box's mask is not drawn on the key slice"
        # A second object in its own colour (green), from a box on the other lesion.
        page.fill("#object", "2")
        _box(page, study[1][1], object_id=2)
        assert overlay_pixels(_canvas(page), colour="green") > 100, "object 2 is not drawn in green"
        _propagate(page)
        assert "Propagated 6 slices" in _status(page)
        assert page.eval_on_selector("#progress", "p => [p.value, p.max]") == [6, 6]
        page.wait_for_selector("#measurements tbody tr")
        key_png = _canvas(page)
        (ARTIFACTS / "propagated-key-slice.png").write_bytes(page.screenshot())
        go_to_slice(page, KEY - 2)
        propagated_png = _canvas(page)
        (ARTIFACTS / "propagated-slice.png").write_bytes(page.screenshot())
        # Objects overlap (untrained weights), and the later one is painted on top: count either colour.
        assert overlay_pixels(key_png) > 100
        assert overlay_pixels(propagated_png) + overlay_pixels(propagated_png, colour="green") > 100
        assert page.evaluate(f"window.medsam2Viewer.overlayVoxels({KEY - 2})") > 0
        volume_cell = page.inner_text("#measurements tbody tr td:nth-child(2)")
        assert float(volume_cell) > 0

        # A negative click inside the object on the key slice: that slice's mask must change.
        go_to_slice(page, KEY)
        before = page.evaluate(f"window.medsam2Viewer.overlayVoxels({KEY})")
        before_pixels = overlay_pixels(_canvas(page))
        page.fill("#object", "1")
        page.check("input[name=mode][value=negative]")
        box = study[1][0]
        point = page.evaluate(
            "([x, y]) => window.medsam2Viewer.voxelToPage(x, y)", [(box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2]
        )
        page.mouse.click(*point)
        page.locator("#status", has_text="Negative click").wait_for(timeout=patience.BROWSER_STEP_MS)
        after = page.evaluate(f"window.medsam2Viewer.overlayVoxels({KEY})")
        after_png = _canvas(page)
        (ARTIFACTS / "negative-click.png").write_bytes(page.screenshot())
        assert after != before and overlay_pixels(after_png) != before_pixels
        _propagate(page)
        assert "Propagated" in _status(page)
        (ARTIFACTS / "corrected.png").write_bytes(page.screenshot())
    finally:
        service.stop()


def test_bad_inputs_show_clear_messages(graphs, study, page, tmp_path: Path) -> None:
    service = Service(graphs["present"], token=TOKEN, log=tmp_path / "serve.log")
    try:
        page.goto(service.url)
        page.wait_for_selector("body[data-auth=needed]")
        assert "needs a token" in _status(page)
        _sign_in(page, service, token="not-the-token")
        page.wait_for_selector("#status.error")
        assert "refused the token" in _status(page) and "UNAUTHENTICATED" in _status(page)
        (ARTIFACTS / "wrong-token.png").write_bytes(page.screenshot())

        _sign_in(page, service)
        page.wait_for_selector("body[data-auth=ok]")
        # Signing in ends with its own status line, which must not race the next message.
        page.locator("#status", has_text="Signed in").wait_for()
        not_an_image = tmp_path / "notes.nii"
        not_an_image.write_text("these are notes, not an image\n" * 20)
        page.set_input_files("#file", str(not_an_image))
        page.wait_for_selector("#status.error")
        assert "notes.nii is not a NIfTI image" in _status(page)
        (ARTIFACTS / "not-an-image.png").write_bytes(page.screenshot())

        folder = tmp_path / "not-dicom"
        folder.mkdir()
        (folder / "readme.txt").write_text("no images here\n")
        page.set_input_files("#dicom", str(folder))
        page.locator("#status.error", has_text="no DICOM slices").wait_for()
        page.set_input_files("#dicom", str(CT5N))
        page.locator("#status", has_text="Opened a DICOM series of 5 files").wait_for(timeout=patience.BROWSER_STEP_MS)
        assert page.get_attribute("#slice", "max") == "4"

        _open_and_box(page, study)
        page.click("#propagate")
        page.locator("#progress-label", has_text="/").wait_for(timeout=patience.BROWSER_STEP_MS)
        service.kill()
        page.wait_for_selector("body[data-propagation=failed]", timeout=patience.BROWSER_STEP_MS)
        message = _status(page)
        assert "Propagation stopped after" in message and ("server" in message or "connection" in message)
        (ARTIFACTS / "server-gone.png").write_bytes(page.screenshot())
    finally:
        service.stop()
