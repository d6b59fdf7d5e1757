"""Time from "Propagate" to the last slice drawn in the web viewer, against the gRPC client, on one study.

Starts `medsam2 serve` with its HTTP gateway, opens the same synthetic NIfTI study in Debian's headless chromium
(the page reports the time from the click to the frame after the last slice was painted) and through
medsam2.api.client.Client (the code `medsam2 client` runs: the time from the Propagate call to its last message),
alternating the two run by run so that background load slows both alike. Prints one JSON object.

With ``--pacs`` the study is a synthetic CT series in a real Orthanc (in a private network namespace, see
tests/integration/orthanc.py): the page opens it by its Study Instance UID (GetImage brings the pixels), the
client by ``open_pacs`` (what ``medsam2 client --pacs`` runs).

    .venv/bin/python benchmarks/web_viewer.py --graphs work/model_repository --slices 16 --runs 3 [--pacs]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests" / "integration"), str(REPO / "services"), str(REPO / "export")]

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

from browser_page import Service, drag, go_to_slice, launch  # noqa: E402
from medsam2.api.client import Client  # noqa: E402
from medsam2_export.parity import synthetic_volume  # noqa: E402

TOKEN = "benchmark"


def _page_run(context, service: Service, study: Path | str, box, key: int) -> float:
    """One page run; ``study`` is a NIfTI file, or a Study Instance UID on the server's PACS endpoint."""
    page = context.new_page()
    try:
        page.goto(service.url)
        page.wait_for_selector("body[data-ready=true]")
        page.fill("#token", TOKEN)
        page.click("#signin-button")
        page.wait_for_selector("body[data-auth=ok]")
        if isinstance(study, Path):
            page.set_input_files("#file", str(study))
        else:
            page.wait_for_selector("#server-info:has-text('capabilities')", state="attached")
            page.fill("#pacs-study", study)
            page.click("#pacs-open")
        page.wait_for_selector("body[data-session]", timeout=120_000)
        go_to_slice(page, key)
        start = page.evaluate("([x, y]) => window.medsam2Viewer.voxelToPage(x, y)", [box.x0, box.y0])
        end = page.evaluate("([x, y]) => window.medsam2Viewer.voxelToPage(x, y)", [box.x1 - 1, box.y1 - 1])
        drag(page, start, end)
        page.locator("#status", has_text="segmented there").wait_for(timeout=120_000)
        page.click("#propagate")
        page.wait_for_selector("body[data-propagation=done]", timeout=600_000)
        seconds = float(page.get_attribute("body", "data-propagation-seconds"))
        page.evaluate(
            "sid => fetch('/v1/CloseSession', {method: 'POST', headers: {'Content-Type': 'application/json', Authorization: 'Bearer "  # noqa: E501
            + TOKEN
            + "'}, body: JSON.stringify({sessionId: sid})})",
            page.get_attribute("body", "data-session"),
        )
        return seconds
    finally:
        page.close()


def _client_run(service: Service, frames: np.ndarray | str, spacing, box, key: int) -> float:
    """One client run; ``frames`` is the study's voxels, or its Study Instance UID on the PACS endpoint."""
    client = Client(service.grpc_target, token=TOKEN)
    try:
        if isinstance(frames, str):
            session = client.open_pacs("orthanc", frames, preset="auto")
        else:
            session = client.create_session(frames, spacing, preset="auto")
        client.add_box(session.session_id, 1, key, (box.x0, box.y0, box.x1, box.y1))
        started = time.perf_counter()
        for _ in client.propagate(session.session_id):
            pass
        seconds = time.perf_counter() - started
        client.close_session(session.session_id)
        return seconds
    finally:
        client.close()


def _summary(slices: int, page_times: list[float], client_times: list[float], load: list[float]) -> dict:
    return {
        "slices": slices,
        "propagated_slices": slices + 1,
        "runs": len(page_times),
        "page_s": {"median": statistics.median(page_times), "all": page_times},
        "client_s": {"median": statistics.median(client_times), "all": client_times},
        "ratio_page_over_client": statistics.median(page_times) / statistics.median(client_times),
        "load_average": load,
    }


def scenario_pacs(server, folder: str, graphs: str, runs: int, box: list[int], key: int) -> dict:
    """Inside the namespace: store the series in Orthanc, serve with it as endpoint 'orthanc', time both ways."""
    import pydicom

    from medsam2.pacs.config import PacsEndpoint
    from medsam2.pacs.transfer import store_instances

    series = [pydicom.dcmread(p) for p in sorted(Path(folder).glob("*.dcm"))]
    store_instances(PacsEndpoint("orthanc", server.dicomweb_url, timeout_s=60), series)
    study = str(series[0].StudyInstanceUID)
    bounds = SimpleNamespace(x0=box[0], y0=box[1], x1=box[2], y1=box[3])
    with tempfile.TemporaryDirectory() as tmp:
        env = {"MEDSAM2_PACS_ORTHANC_URL": server.dicomweb_url}
        service = Service(Path(graphs), token=TOKEN, log=Path(tmp) / "serve.log", env=env)
        load_before = os.getloadavg()[0]
        page_times, client_times = [], []
        try:
            with sync_playwright() as playwright:
                context = launch(playwright, Path(tmp) / "profile")
                for _ in range(runs):
                    page_times.append(_page_run(context, service, study, bounds, key))
                    client_times.append(_client_run(service, study, None, bounds, key))
                context.close()
        finally:
            service.stop()
    return _summary(len(series), page_times, client_times, [load_before, os.getloadavg()[0]])


def _main_pacs(args: argparse.Namespace) -> None:
    import orthanc
    from medsam2.testing.synthetic_ct import write_synthetic_ct
    from test_dicom_roundtrip import lesion_box

    with tempfile.TemporaryDirectory() as tmp:
        series = write_synthetic_ct(Path(tmp) / "ct", slices=args.slices, size=128, seed=3)
        key = series.lesion_voxel()[0]
        summary = orthanc.run_isolated(
            scenario_pacs,
            timeout_s=3600,
            folder=str(series.folder),
            graphs=str(args.graphs.resolve()),
            runs=args.runs,
            box=list(lesion_box(series)),
            key=key,
        )
    print(json.dumps({"study": f"synthetic CT series in Orthanc, {args.slices}x128x128", **summary}, indent=1))


def main() -> None:
    """Run and print the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graphs", type=Path, required=True, help="exported graphs (a model repository)")
    parser.add_argument("--slices", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pacs", action="store_true", help="open a CT series from a real Orthanc by its UID")
    args = parser.parse_args()
    if args.pacs:
        _main_pacs(args)
        return
    frames, boxes = synthetic_volume(seed=3, slices=args.slices, height=128, width=128)
    spacing = (2.5, 0.7, 0.7)
    key = args.slices // 2
    with tempfile.TemporaryDirectory() as tmp:
        study = Path(tmp) / "study.nii.gz"
        nib.save(nib.Nifti1Image(np.ascontiguousarray(frames.transpose(2, 1, 0)), np.diag([0.7, 0.7, 2.5, 1.0])), study)
        service = Service(args.graphs, token=TOKEN, log=Path(tmp) / "serve.log")
        load_before = os.getloadavg()[0]
        page_times, client_times = [], []
        try:
            with sync_playwright() as playwright:
                context = launch(playwright, Path(tmp) / "profile")
                for _ in range(args.runs):
                    page_times.append(_page_run(context, service, study, boxes[0], key))
                    client_times.append(_client_run(service, frames, spacing, boxes[0], key))
                context.close()
        finally:
            service.stop()
    print(json.dumps(_summary(args.slices, page_times, client_times, [load_before, os.getloadavg()[0]]), indent=1))


if __name__ == "__main__":
    main()
