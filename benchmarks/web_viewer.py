"""Time from "Propagate" to the last slice drawn in the web viewer, against the gRPC client, on one study.

Starts `medsam2 serve` with its HTTP gateway, opens the same synthetic NIfTI study in Debian's headless chromium
(the page reports the time from the click to the frame after the last slice was painted) and through
medsam2.api.client.Client (the code `medsam2 client` runs: the time from the Propagate call to its last message),
alternating the two run by run so that background load slows both alike. Prints one JSON object.

    .venv/bin/python benchmarks/web_viewer.py --graphs work/model_repository --slices 16 --runs 3
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

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests" / "integration"), str(REPO / "services"), str(REPO / "export")]

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

from browser_page import Service, drag, go_to_slice, launch  # noqa: E402
from medsam2.api.client import Client  # noqa: E402
from medsam2_export.parity import synthetic_volume  # noqa: E402

TOKEN = "benchmark"


def _page_run(context, service: Service, study: Path, box, key: int) -> float:
    page = context.new_page()
    try:
        page.goto(service.url)
        page.wait_for_selector("body[data-ready=true]")
        page.fill("#token", TOKEN)
        page.click("#signin-button")
        page.wait_for_selector("body[data-auth=ok]")
        page.set_input_files("#file", str(study))
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


def _client_run(service: Service, frames: np.ndarray, spacing, box, key: int) -> float:
    client = Client(service.grpc_target, token=TOKEN)
    try:
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


def main() -> None:
    """Run and print the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graphs", type=Path, required=True, help="exported graphs (a model repository)")
    parser.add_argument("--slices", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
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
    print(
        json.dumps(
            {
                "slices": args.slices,
                "propagated_slices": args.slices + 1,
                "runs": args.runs,
                "page_s": {"median": statistics.median(page_times), "all": page_times},
                "client_s": {"median": statistics.median(client_times), "all": client_times},
                "ratio_page_over_client": statistics.median(page_times) / statistics.median(client_times),
                "load_average": [load_before, os.getloadavg()[0]],
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
