"""Time and bytes of the clinical round trip: a CT series in Orthanc -> medsam2 serve -> client --pacs with an
actions file (box, propagate, negative click on a non-key slice, propagate) -> --store SEG and SR back.

Runs Orthanc in a private network namespace (tests/integration/orthanc.py) and prints one JSON object. A
measurement, not a test: it asserts nothing about speed.

    PYTHONPATH=services:export:tests/integration python benchmarks/roundtrip_orthanc.py \
        --graphs GRAPHS --slices 60 --size 512
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "integration"), str(ROOT / "services"), str(ROOT / "export")]

import orthanc  # noqa: E402
from test_roundtrip_orthanc import Service, _actions, _client, _stats  # noqa: E402


def scenario_measure(server: orthanc.OrthancServer, folder: str, graphs: str, actions: str, out: str) -> dict[str, Any]:
    """STOW the series, serve, run the client once with --store; time it and count the bytes."""
    import pydicom

    from medsam2.pacs.config import PacsEndpoint
    from medsam2.pacs.transfer import store_instances

    endpoint = PacsEndpoint("orthanc", server.dicomweb_url, timeout_s=120)
    series = [pydicom.dcmread(p) for p in sorted(Path(folder).glob("*.dcm"))]
    store_instances(endpoint, series)
    before = _stats(server)
    with Service(graphs, Path(out), MEDSAM2_PACS_ORTHANC_URL=server.dicomweb_url) as service:
        started = time.perf_counter()
        done = _client(
            service.target,
            "--pacs",
            "orthanc",
            "--study",
            str(series[0].StudyInstanceUID),
            "--actions",
            actions,
            "--out",
            str(Path(out) / "result.dcm"),
            "--store",
            "orthanc",
            "--json",
        )
        seconds = time.perf_counter() - started
    after = _stats(server)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return {"seconds": seconds, "client": json.loads(done.stdout), "orthanc_before": before, "orthanc_after": after}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graphs", type=Path, required=True, help="exported ONNX graphs (or a model repository)")
    parser.add_argument("--slices", type=int, default=60)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    from medsam2.testing.synthetic_ct import write_synthetic_ct

    with tempfile.TemporaryDirectory(prefix="roundtrip-") as tmp:
        folder = Path(tmp)
        series = write_synthetic_ct(folder / "ct", slices=args.slices, size=args.size, seed=60)
        actions, key = _actions(series, folder)
        out = folder / "out"
        out.mkdir()
        series_bytes = sum(p.stat().st_size for p in series.paths)
        report = orthanc.run_isolated(
            scenario_measure,
            timeout_s=3600,
            folder=str(series.folder),
            graphs=str(args.graphs),
            actions=str(actions),
            out=str(out),
        )
        print(json.dumps(report), file=sys.stderr)  # the raw figures, whatever happens below
        seg_bytes = (out / "result.dcm").stat().st_size
        sr_bytes = (out / "result.sr.dcm").stat().st_size
    before, after = (int(report[k]["TotalUncompressedSize"]) for k in ("orthanc_before", "orthanc_after"))
    stored = after - before
    print(
        json.dumps(
            {
                "slices": args.slices,
                "size": args.size,
                "key_slice": key,
                "round_trip_seconds": round(report["seconds"], 2),
                "slices_streamed": report["client"]["slices_streamed"],
                "bytes": {
                    "series_files (WADO-RS, PACS -> service)": series_bytes,
                    "client_sent (gRPC upload)": report["client"]["bytes_sent"],
                    "client_received (gRPC SEG + SR)": report["client"]["bytes_received"],
                    "stored_on_pacs (STOW-RS SEG + SR, Orthanc's count)": int(stored),
                    "seg_file": seg_bytes,
                    "sr_file": sr_bytes,
                },
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
