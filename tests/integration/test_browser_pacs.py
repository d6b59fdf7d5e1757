"""The web viewer on a PACS study: a real Orthanc, a real `medsam2 serve` and Debian's headless Chromium.

Inside a private network namespace (tests/integration/orthanc.py) a synthetic CT series goes into Orthanc, and
`medsam2 serve --http-port` runs with ``MEDSAM2_PACS_ORTHANC_URL``. The page signs in, refuses a malformed UID and
names an unknown one, opens the study by its Study Instance UID (the server fetches it over DICOMweb and sends its
voxels back through GetImage), draws a box, propagates, corrects with a click, propagates again and stores to
PACS. The test then checks, outside the namespace, what the page showed (overlay pixels on the key slice and on
propagated slices, the voxels in HU) and that Orthanc holds the SEG and SR in that study. Screenshots go to
artifacts/browser/pacs-*.png.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import orthanc
import patience
from browser_page import ARTIFACTS, CHROMIUM, build_bundle
from medsam2.testing.synthetic_ct import SyntheticSeries, write_synthetic_ct

pytest.importorskip("playwright.sync_api", reason="pip install playwright (the dev extra)")
REASON = orthanc.unavailable_reason()
pytestmark = [
    pytest.mark.skipif(REASON is not None, reason=REASON or ""),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (scripts/test_deps.sh)"),
]

TOKEN = "pacs-browser-token"
UNKNOWN_STUDY = "1.2.826.0.1.3680043.99.1"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


# --- the scenario: runs inside the namespace ---------------------------------------------------------------


def _status(page) -> str:
    return page.inner_text("#status")


def _overlay(page, slice_index: int, name: str) -> dict[str, int]:
    """Red overlay pixels on the canvas and overlay voxels in the drawing layer of one slice; saves a screenshot."""
    from browser_page import go_to_slice, overlay_pixels

    go_to_slice(page, slice_index)
    canvas = page.locator("#gl").screenshot()
    (ARTIFACTS / f"pacs-{name}.png").write_bytes(page.screenshot())
    return {
        "pixels": overlay_pixels(canvas),
        "voxels": page.evaluate(f"window.medsam2Viewer.overlayVoxels({slice_index})"),
    }


def open_and_segment(page, service_url: str, study: str, key: int, box: list[int], click: list[float]) -> dict:
    """Sign in, open ``study`` by UID, box on ``key``, propagate, a negative click, propagate again, store."""
    import urllib.request

    from browser_page import drag, go_to_slice

    with urllib.request.urlopen(service_url + "openapi.json", timeout=10) as answer:
        out: dict[str, Any] = {"openapi": sorted(json.load(answer)["paths"])}
    page.goto(service_url)
    page.wait_for_selector("body[data-ready=true]")
    page.fill("#token", TOKEN)
    page.click("#signin-button")
    page.wait_for_selector("body[data-auth=ok]")
    page.locator("#status", has_text="Signed in").wait_for()
    page.wait_for_selector("#server-info:has-text('capabilities')", state="attached")
    out["endpoint"] = page.input_value("#pacs-endpoint")

    # Bad UIDs: one that is not a UID at all (refused in the page), one the PACS does not hold (the server's word).
    page.fill("#pacs-study", "CT abdomen")
    page.click("#pacs-open")
    page.locator("#status.error", has_text="is not a Study Instance UID").wait_for()
    out["malformed"] = _status(page)
    page.fill("#pacs-study", UNKNOWN_STUDY)
    page.click("#pacs-open")
    page.locator("#status.error", has_text=f"Cannot open study {UNKNOWN_STUDY}").wait_for(
        timeout=patience.BROWSER_STEP_MS
    )
    out["unknown"] = _status(page)
    (ARTIFACTS / "pacs-unknown-uid.png").write_bytes(page.screenshot())
    out["session_after_unknown"] = page.get_attribute("body", "data-session")

    page.fill("#pacs-study", study)
    page.click("#pacs-open")
    page.wait_for_selector("body[data-source=pacs]", timeout=patience.BROWSER_STEP_MS)
    page.locator("#status", has_text="Opened PACS study").wait_for()
    out["opened"] = _status(page)
    out["slice_max"] = page.get_attribute("#slice", "max")
    go_to_slice(page, key)
    x, y = int(click[0]), int(click[1])
    out["voxel_at_lesion"] = page.evaluate(f"window.medsam2Viewer.voxelValue({x}, {y}, {key})")
    out["voxel_at_corner"] = page.evaluate(f"window.medsam2Viewer.voxelValue(0, 0, {key})")

    start = page.evaluate("([x, y]) => window.medsam2Viewer.voxelToPage(x, y)", [box[0], box[1]])
    end = page.evaluate("([x, y]) => window.medsam2Viewer.voxelToPage(x, y)", [box[2] - 1, box[3] - 1])
    drag(page, start, end)
    page.locator("#status", has_text="object 1 segmented there").wait_for(timeout=patience.BROWSER_STEP_MS)
    out["after_box"] = _overlay(page, key, "box")
    out["store_disabled_before_propagation"] = page.is_disabled("#store")

    page.click("#propagate")
    page.wait_for_selector("body[data-propagation=done]", timeout=patience.BROWSER_PROPAGATION_MS)
    out["propagated"] = _status(page)
    out["page_seconds"] = float(page.get_attribute("body", "data-propagation-seconds") or "nan")
    out["progress"] = page.eval_on_selector("#progress", "p => [p.value, p.max]")
    page.select_option("#window", "400/40")  # the abdomen preset acts on the HU the page holds
    out["key"] = _overlay(page, key, "key-slice")
    out["below"] = _overlay(page, key - 2, "propagated-slice")
    out["above"] = _overlay(page, key + 2, "propagated-slice-above")

    # A negative click at the lesion's centre on the key slice corrects it; propagate again.
    go_to_slice(page, key)
    page.check("input[name=mode][value=negative]")
    point = page.evaluate("([x, y]) => window.medsam2Viewer.voxelToPage(x, y)", click)
    page.mouse.click(*point)
    page.locator("#status", has_text="Negative click").wait_for(timeout=patience.BROWSER_STEP_MS)
    out["after_click"] = _overlay(page, key, "negative-click")
    page.click("#propagate")
    page.locator("#status", has_text="Propagated").wait_for(timeout=patience.BROWSER_PROPAGATION_MS)
    page.wait_for_selector("body[data-propagation=done]")

    page.wait_for_selector("#store:not([disabled])")
    out["store_visible"] = page.is_visible("#store")
    page.click("#store")
    page.wait_for_selector("body[data-stored]", timeout=patience.BROWSER_STEP_MS)
    out["stored"] = _status(page)
    out["stored_seg"] = page.get_attribute("body", "data-stored")
    (ARTIFACTS / "pacs-stored.png").write_bytes(page.screenshot())

    # The corrected study becomes a training case in the server's annotation store.
    out["save_visible"] = page.is_visible("#save-annotation")
    page.click("#save-annotation")
    page.wait_for_selector("body[data-saved-case]", timeout=patience.BROWSER_STEP_MS)
    out["saved"] = _status(page)
    out["saved_case"] = page.get_attribute("body", "data-saved-case")
    return out


def scenario_page(server: orthanc.OrthancServer, folder: str, graphs: str, key: int, box: list, click: list) -> dict:
    """Store the series, serve with the PACS endpoint, drive the page, read back what Orthanc holds."""
    import pydicom
    from playwright.sync_api import sync_playwright

    from browser_page import Service, launch
    from medsam2.pacs.client import connect
    from medsam2.pacs.config import PacsEndpoint
    from medsam2.pacs.transfer import store_instances

    endpoint = PacsEndpoint("orthanc", server.dicomweb_url, timeout_s=60)
    series = [pydicom.dcmread(p) for p in sorted(Path(folder).glob("*.dcm"))]
    store_instances(endpoint, series)
    study = str(series[0].StudyInstanceUID)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pacs-page-") as tmp:
        log = Path(tmp) / "serve.log"
        annotations = Path(tmp) / "annotations"
        settings = {"MEDSAM2_PACS_ORTHANC_URL": server.dicomweb_url, "MEDSAM2_ANNOTATIONS_DIR": str(annotations)}
        service = Service(Path(graphs), token=TOKEN, log=log, env=settings)
        problems: list[str] = []
        try:
            with sync_playwright() as playwright:
                context = launch(playwright, Path(tmp) / "profile")
                page = context.new_page()
                page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
                page.on("console", lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None)
                try:
                    out = open_and_segment(page, service.url, study, key, box, click)
                except Exception as exc:
                    (ARTIFACTS / "pacs-failure.png").write_bytes(page.screenshot())
                    tail = log.read_text()[-3000:]
                    raise AssertionError(f"{exc}\nstatus: {_status(page)}\nserve log:\n{tail}") from exc
                context.close()
        finally:
            service.stop()
        from medsam2.datasets.training_npz import read_training_case

        case = read_training_case(annotations / out["saved_case"])
        out["saved_shape"] = list(case.imgs.shape)
        out["saved_labels"] = case.labels
    out["problems"] = problems
    client = connect(endpoint)
    found = client.search_for_series(study_instance_uid=study, fields=["Modality"])
    out["series"] = sorted((_tag(s, "00080060"), _tag(s, "0020000E")) for s in found)
    seg_series = [uid for modality, uid in out["series"] if modality == "SEG"]
    out["seg_instances"] = []
    for uid in seg_series:
        for item in client.search_for_instances(study_instance_uid=study, series_instance_uid=uid):
            sop = _tag(item, "00080018")
            seg = client.retrieve_instance(study, uid, sop)
            frames = seg.PerFrameFunctionalGroupsSequence
            sources = [f.DerivationImageSequence[0].SourceImageSequence[0] for f in frames]
            out["seg_instances"].append(
                {
                    "sop": sop,
                    "class": str(seg.SOPClassUID),
                    "study": str(seg.StudyInstanceUID),
                    "referenced": sorted({str(s.ReferencedSOPInstanceUID) for s in sources}),
                }
            )
    out["study"] = study
    out["sop_uids"] = [str(ds.SOPInstanceUID) for ds in series]
    return out


def _tag(item: dict, tag: str) -> str:
    return str((item.get(tag, {}).get("Value") or [""])[0])


# --- the test: runs in the test process ------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle() -> None:
    if not build_bundle():
        pytest.skip("the page is not built and npm is missing (node 20 and npm build it: scripts/build_web.sh)")


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> SyntheticSeries:
    return write_synthetic_ct(tmp_path_factory.mktemp("pacs-page") / "ct", slices=10, size=64, seed=31)


def test_a_pacs_study_opened_by_uid_is_segmented_in_the_page_and_stored(
    series: SyntheticSeries, graphs: dict[str, Path], bundle: None
) -> None:
    from medsam2.io.volumes import read_volume
    from test_dicom_roundtrip import lesion_box

    key, row, col = series.lesion_voxel()
    box = list(lesion_box(series))
    report = orthanc.run_isolated(
        scenario_page,
        timeout_s=patience.LONG_COMMAND_S,
        folder=str(series.folder),
        graphs=str(graphs["present"]),
        key=key,
        box=box,
        click=[col + 0.5, row + 0.5],
    )
    print(json.dumps({"page_seconds": report["page_seconds"], "slices": len(series.sop_uids)}))
    assert report["problems"] == []
    assert {"/v1/GetImage", "/v1/GetImage:download", "/v1/StoreResult"} <= set(report["openapi"])
    assert report["endpoint"] == "orthanc"  # the page took the server's endpoint name from GetServerInfo
    # Bad UIDs: a clear message each, and no session opened.
    assert "a UID is digits and dots" in report["malformed"]
    assert f"Cannot open study {UNKNOWN_STUDY} from PACS orthanc" in report["unknown"]
    assert "is not on PACS orthanc" in report["unknown"] and "NOT_FOUND" in report["unknown"]
    assert report["session_after_unknown"] is None
    # The study the page shows is the series as loaded: its slices, and CT numbers (HU) voxel for voxel.
    local = read_volume(series.folder)
    assert report["slice_max"] == str(local.voxels.shape[0] - 1)
    assert f"Opened PACS study {report['study']}: {local.voxels.shape[0]} slices (CT)" in report["opened"]
    assert report["voxel_at_lesion"] == local.voxels[key, row, col]
    assert report["voxel_at_corner"] == local.voxels[key, 0, 0]
    # Box, propagation and correction draw overlays where they should.
    assert report["after_box"]["pixels"] > 100 and report["after_box"]["voxels"] > 0
    assert report["store_disabled_before_propagation"]
    total = local.voxels.shape[0]  # the key slice is streamed once (the backward pass starts past it)
    assert report["progress"] == [total, total] and f"Propagated {total} slices" in report["propagated"]
    for where in ("key", "below", "above"):
        assert report[where]["pixels"] > 100 and report[where]["voxels"] > 0, where
    assert report["after_click"]["voxels"] != report["key"]["voxels"], "the negative click changed nothing"
    # Stored: Orthanc holds one SEG and one SR in the study, the SEG the page named, over the series' slices.
    assert report["store_visible"]
    assert f"in study {report['study']}" in report["stored"] and report["stored_seg"] in report["stored"]
    modalities = [m for m, _ in report["series"]]
    assert sorted(modalities) == ["CT", "SEG", "SR"]
    (seg,) = report["seg_instances"]
    assert seg["sop"] == report["stored_seg"] and seg["class"] == SEG_CLASS and seg["study"] == report["study"]
    assert seg["referenced"] and set(seg["referenced"]) <= set(report["sop_uids"])
    # Saved for training: the page's study at its own size, with the object it segmented.
    assert report["save_visible"] and report["saved_case"].split("/")[1] in report["saved"]
    assert report["saved_shape"] == list(local.voxels.shape) and report["saved_labels"] == [1]
    assert all((ARTIFACTS / f"pacs-{name}.png").is_file() for name in ("key-slice", "propagated-slice", "stored"))
    assert np.isfinite(report["page_seconds"])
