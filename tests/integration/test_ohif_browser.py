"""Stock OHIF 3.13.2 served by `medsam2 serve` at /ohif/, with the MedSAM2 extension, on a study in Orthanc.

Inside a private network namespace (tests/integration/orthanc.py): a 16-slice 128x128 synthetic CT goes into
Orthanc, `medsam2 serve --http-port` runs with the Orthanc endpoint and a bearer token, and Debian's headless
Chromium opens OHIF from the service. OHIF lists the study through the gateway's DICOMweb proxy (the browser
holds only its medsam2 token) and loads the extension from app-config.js. Screenshots go to
artifacts/browser/ohif-*.png.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest

import orthanc
import patience
from browser_page import ARTIFACTS, CHROMIUM, REPO
from medsam2.testing.synthetic_ct import SyntheticSeries, write_synthetic_ct

pytest.importorskip("playwright.sync_api", reason="pip install playwright (the dev extra)")
REASON = orthanc.unavailable_reason()
OHIF_BUILT = (REPO / "services" / "medsam2" / "gateway" / "ohif" / "medsam2" / "extension.js").is_file()
pytestmark = [
    pytest.mark.skipif(REASON is not None, reason=REASON or ""),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (scripts/test_deps.sh)"),
    pytest.mark.skipif(not OHIF_BUILT, reason="OHIF is not installed: run scripts/build_web.sh (needs npm)"),
]

TOKEN = "ohif-browser-token"


def _shot(page, name: str) -> None:
    (ARTIFACTS / f"ohif-{name}.png").write_bytes(page.screenshot())


def _status(page) -> str:
    return page.inner_text("#medsam2-status")


def _wait_status(page, text: str, timeout_s: float) -> str:
    page.locator("#medsam2-status", has_text=text).wait_for(timeout=timeout_s * 1000)
    return _status(page)


def drive_ohif(page, service_url: str, study: str, key: int, box: list[int], click: list[int], brush: list) -> dict:
    """Open the study in OHIF from the service and run the reader's loop with real mouse events."""
    from browser_page import drag

    out: dict[str, Any] = {}
    page.add_init_script(f"sessionStorage.setItem('medsam2-token', {json.dumps(TOKEN)})")
    page.goto(service_url + "ohif/")
    page.wait_for_function("() => window.medsam2 !== undefined", timeout=patience.BROWSER_STEP_MS)
    page.locator("text=Synthetic, Phantom").first.wait_for(timeout=patience.BROWSER_STEP_MS)
    _shot(page, "study-list")
    out["study_listed"] = True
    page.goto(service_url + f"ohif/segmentation?StudyInstanceUIDs={study}")
    page.wait_for_selector("#medsam2-panel", timeout=patience.BROWSER_STEP_MS)
    page.wait_for_function(
        "() => window.services?.viewportGridService?.getDisplaySetsUIDsForViewport("
        "window.services.viewportGridService.getActiveViewportId())?.length > 0",
        timeout=patience.BROWSER_STEP_MS,
    )
    page.wait_for_timeout(3000)
    _shot(page, "viewer")

    # The object, then a box with OHIF's rectangle tool on the key slice.
    page.fill("#medsam2-label", "liver lesion")
    page.evaluate("k => window.medsam2.showSlice(k)", key)
    page.wait_for_timeout(500)
    page.click("#medsam2-box")
    start = page.evaluate("([k, x, y]) => window.medsam2.pageOf(k, x, y)", [key, box[0], box[1]])
    end = page.evaluate("([k, x, y]) => window.medsam2.pageOf(k, x, y)", [key, box[2], box[3]])
    drag(page, tuple(start), tuple(end))
    out["after_box"] = _wait_status(page, "Segmented slice", 120)
    _shot(page, "box")

    page.click("#medsam2-propagate")
    out["propagated"] = _wait_status(page, "Propagated through", 900)
    page.evaluate("k => window.medsam2.showSlice(k)", key + 2)
    page.wait_for_timeout(500)
    _shot(page, "propagated")

    # A negative click on another slice, and a brush stroke (OHIF's own brush) on a third; propagate again.
    page.click("#medsam2-neg")
    point = page.evaluate("([k, x, y]) => window.medsam2.pageOf(k, x, y)", [key + 2, click[0], click[1]])
    page.mouse.click(*point)
    out["after_click"] = _wait_status(page, "Negative click", 120)
    _shot(page, "negative-click")
    page.evaluate("k => window.medsam2.showSlice(k)", brush[0])
    page.wait_for_timeout(500)
    page.evaluate(
        """() => {
          const vp = window.services.viewportGridService.getActiveViewportId();
          const tg = window.cornerstoneTools.ToolGroupManager.getToolGroupForViewport(vp);
          tg.setToolPassive(tg.getActivePrimaryMouseButtonTool());
          tg.setToolActive('CircularBrush', { bindings: [{ mouseButton: 1 }] });
        }"""
    )
    stroke = [page.evaluate("([k, x, y]) => window.medsam2.pageOf(k, x, y)", [brush[0], x, y]) for x, y in brush[1:]]
    drag(page, tuple(stroke[0]), tuple(stroke[1]))
    page.wait_for_timeout(500)
    _shot(page, "brush")
    page.click("#medsam2-propagate")
    out["propagated_again"] = _wait_status(page, "Propagated through", 900)
    _shot(page, "propagated-again")
    out["labelmap"] = page.evaluate("() => window.medsam2.readLabelmap()")
    out["log"] = page.evaluate("() => window.medsam2.log")
    out["timings"] = page.evaluate("() => window.medsam2.timings")

    page.click("#medsam2-store")
    out["stored"] = _wait_status(page, "Stored the SEG and SR", 120)
    out["stored_uids"] = page.evaluate("() => window.medsam2.stored")
    _shot(page, "stored")

    return out


def scenario_ohif(
    server: orthanc.OrthancServer, folder: str, graphs: str, key: int, box: list, click: list, brush: list
) -> dict:
    """Store the series, serve with the PACS endpoint, drive OHIF, report what it showed."""
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
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="ohif-") as tmp:
        log = Path(tmp) / "serve.log"
        settings = {"MEDSAM2_PACS_ORTHANC_URL": server.dicomweb_url}
        service = Service(Path(graphs), token=TOKEN, log=log, env=settings)
        try:
            with sync_playwright() as playwright:
                context = launch(playwright, Path(tmp) / "profile")
                page = context.new_page()
                page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
                page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
                try:
                    out = drive_ohif(page, service.url, study, key, box, click, brush)
                except Exception as exc:
                    _shot(page, "failure")
                    tail = log.read_text()[-3000:]
                    status = page.inner_text("#medsam2-status") if page.is_visible("#medsam2-status") else "-"
                    raise AssertionError(
                        f"{exc}\nstatus: {status}\nconsole: {problems[-10:]}\nserve log:\n{tail}"
                    ) from exc
                context.close()
            out["client"] = _client_timings(service.grpc_target, study, out["log"])
        finally:
            service.stop()
    out["problems"] = problems
    out["study"] = study
    client = connect(endpoint)
    found = client.search_for_series(study_instance_uid=study, fields=["Modality", "SeriesDescription", "SeriesNumber"])
    out["series"] = sorted(
        (_tag(s, "00080060"), _tag(s, "0020000E"), _tag(s, "0008103E"), _tag(s, "00200011")) for s in found
    )
    stored = out["stored_uids"]
    seg = client.retrieve_instance(study, stored["segSeriesUid"], stored["segSopInstanceUid"])
    out["seg_labels"] = [str(x.SegmentLabel) for x in seg.SegmentSequence]
    out["seg_frames"] = {}
    pixels = seg.pixel_array.reshape(-1, int(seg.Rows), int(seg.Columns))
    for frame, item in zip(pixels, seg.PerFrameFunctionalGroupsSequence, strict=True):
        sop = str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        out["seg_frames"][sop] = int(frame.astype(bool).sum())
    return out


def _tag(item: dict, tag: str) -> str:
    return str((item.get(tag, {}).get("Value") or [""])[0])


def _client_timings(target: str, study: str, steps: list[dict]) -> dict[str, float]:
    """The same box and propagation through the Python client on the same service: box -> mask, propagate -> last."""
    import time

    from medsam2.api.client import Client

    client = Client(target, token=TOKEN)
    try:
        session = client.open_pacs("orthanc", study, "", preset="auto", window=None, modality="", label="timing")
        box = steps[0]["box"]
        started = time.perf_counter()
        client.add_prompt(session.session_id, 1, steps[0]["slice"], box=(box["x0"], box["y0"], box["x1"], box["y1"]))
        box_s = time.perf_counter() - started
        started = time.perf_counter()
        count = sum(1 for _ in client.propagate(session.session_id))
        client.close_session(session.session_id)
        return {"boxToMask": box_s, "propagateToLast": time.perf_counter() - started, "slices": count}
    finally:
        client.close()


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> SyntheticSeries:
    return write_synthetic_ct(tmp_path_factory.mktemp("ohif") / "ct", slices=16, size=128, seed=41)


def _actions(steps: list[dict], folder: Path) -> Path:
    """The prompts OHIF sent, as an actions file for `medsam2 segment` (a brush edit is its slice's mask)."""
    import base64

    import numpy as np
    from PIL import Image

    actions: list[dict] = []
    for i, step in enumerate(steps):
        if step.get("op") == "propagate":
            actions.append({"op": "propagate"})
        elif "box" in step:
            b = step["box"]
            actions.append(
                {
                    "op": "box",
                    "object": step["objectId"],
                    "slice": step["slice"],
                    "box": [b["x0"], b["y0"], b["x1"], b["y1"]],
                }
            )
        elif "points" in step:
            [p] = step["points"]
            actions.append(
                {
                    "op": "click",
                    "object": step["objectId"],
                    "slice": step["slice"],
                    "point": [p["x"], p["y"]],
                    "positive": p["positive"],
                }
            )
        else:
            mask = step["mask"]
            bits = np.unpackbits(np.frombuffer(base64.b64decode(mask["data"]), np.uint8))
            image = bits[: mask["rows"] * mask["columns"]].reshape(mask["rows"], mask["columns"])
            Image.fromarray(image * 255).save(folder / f"mask-{i}.png")
            actions.append({"op": "mask", "object": step["objectId"], "slice": step["slice"], "path": f"mask-{i}.png"})
    path = folder / "ohif-steps.json"
    path.write_text(json.dumps(actions))
    return path


def _labelmap_masks(labelmap: dict, sop_uids: list[str]):
    import base64

    import numpy as np

    out = []
    for uid in sop_uids:
        entry = labelmap[uid]
        bits = np.unpackbits(np.frombuffer(base64.b64decode(entry["objects"]["1"]["bits"]), np.uint8))
        out.append(bits[: entry["rows"] * entry["columns"]].reshape(entry["rows"], entry["columns"]).astype(bool))
    return np.stack(out)


def test_the_readers_loop_in_stock_ohif_from_the_service(
    series: SyntheticSeries, graphs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    import numpy as np

    from test_dicom_roundtrip import lesion_box

    key, row, col = series.lesion_voxel()
    box = list(lesion_box(series))
    brush = [key - 2, [col - 2, row], [col + 6, row]]
    report = orthanc.run_isolated(
        scenario_ohif,
        timeout_s=patience.LONG_COMMAND_S,
        folder=str(series.folder),
        graphs=str(graphs["present"]),
        key=key,
        box=box,
        click=[col, row],
        brush=brush,
    )
    print(json.dumps({k: v for k, v in report.items() if k not in ("labelmap", "sr_text", "seg_frames")}, indent=1))
    assert report["study_listed"]
    assert not [p for p in report["problems"] if "page error" in p or "Content Security Policy" in p]
    assert "Segmented slice" in report["after_box"] and "Negative click" in report["after_click"]
    ops = [
        ("box" in s) * "box" or ("points" in s) * "click" or ("mask" in s) * "mask" or s["op"] for s in report["log"]
    ]
    assert ops == ["box", "propagate", "click", "mask", "propagate"], ops  # the brush stroke went as a mask prompt

    # OHIF's segmentation, read from its labelmap, equals `medsam2 segment` with the same steps, slice by slice
    # (matched by SOP Instance UID).
    from medsam2.cli.main import main
    from medsam2.io.volumes import read_volume

    local = read_volume(series.folder)
    folder = tmp_path_factory.mktemp("ohif-steps")
    out = folder / "segment.npz"
    steps = _actions(report["log"], folder)
    code = main(
        [
            "--threads",
            "2",
            "segment",
            str(series.folder),
            "--actions",
            str(steps),
            "--out",
            str(out),
            "--graphs",
            str(graphs["present"]),
            "--no-progress",
        ]
    )
    assert code == 0
    expected = np.load(out)["segs"] == 1
    shown = _labelmap_masks(report["labelmap"], list(local.dicom.slice_uids))
    assert expected.any()
    for k, uid in enumerate(local.dicom.slice_uids):
        assert np.array_equal(shown[k], expected[k]), (
            f"slice {k} ({uid}): OHIF {shown[k].sum()}, segment {expected[k].sum()}"
        )

    # Orthanc holds the series, exactly one new SEG and one new SR; the SEG is what OHIF showed.
    modalities = sorted(m for m, *_ in report["series"])
    assert modalities == ["CT", "SEG", "SR"]
    assert report["seg_labels"] == ["liver lesion"]
    for k, uid in enumerate(local.dicom.slice_uids):
        assert report["seg_frames"].get(uid, 0) == int(shown[k].sum()), uid
    descriptions = {m: d for m, _, d, _ in report["series"]}
    assert descriptions["SEG"].startswith("MedSAM2 SEG liver lesion ")
    assert descriptions["SR"].startswith("MedSAM2 SR of SEG ")
    print(json.dumps({"ohif": report["timings"], "client": report["client"]}))
