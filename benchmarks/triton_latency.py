"""Latency per propagated slice through Triton's ``track_step`` at concurrency 1 and 8, per batching setting.

Serves the CPU (Python-backend) repository with the ``tritonserver`` that
``scripts/test_deps.sh`` installs, once per dynamic-batching setting (by default
the old one, preferred sizes [4, 8] with a 2 ms queue delay, and the current
one, no preferred sizes and 200 µs), and sends tracked slices with a full memory
bank from N client threads at once through one ``TritonBackend``, as one
service process with N sessions propagating does. Reports p50 and p99 seconds
per slice and slices per second for each setting and concurrency, and prints
one JSON object. The CPU server shows the cost of the queue settings, not GPU
speed.

    .venv/bin/python benchmarks/triton_latency.py [--onnx-dir DIR] [--slices 8] [--concurrency 1 8]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from medsam2.backends.triton_backend import TritonBackend
from medsam2.graphs import NUM_MASKMEM, Stage
from medsam2_export.model_repository import RepositoryOptions
from medsam2_export.triton_cpu import serve_cpu_repository

SETTINGS = {
    "before": RepositoryOptions(instance_kind="CPU", preferred_batch_sizes=(4, 8), max_queue_delay_us=2000),
    "after": RepositoryOptions(instance_kind="CPU"),
}
"""Dynamic-batching settings compared: the old configs' and the current defaults (on CPU instances)."""


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (linear interpolation), as numpy computes it."""
    return float(np.percentile(np.asarray(values), q))


def run_concurrent(
    backend: TritonBackend, inputs: list[dict[str, np.ndarray]], clients: int, slices: int
) -> dict[str, float]:
    """``clients`` threads each send ``slices`` tracked slices back to back; per-slice latency and throughput."""
    latencies: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients)
    errors: list[BaseException] = []

    def client(k: int) -> None:
        try:
            barrier.wait()
            for i in range(slices):
                start = time.perf_counter()
                backend.run(Stage.TRACK_STEP, inputs[(k + i) % len(inputs)])
                with lock:
                    latencies.append(time.perf_counter() - start)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise errors[0]
    return {
        "clients": clients,
        "slices": len(latencies),
        "p50_s": percentile(latencies, 50),
        "p99_s": percentile(latencies, 99),
        "mean_s": float(np.mean(latencies)),
        "slices_per_s": len(latencies) / wall,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its figures."""
    from triton_track_step import export_graphs, tracked_inputs

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--onnx-dir",
        type=Path,
        help="folder of <stage>.onnx files or a model repository (default: export an untrained checkpoint afresh)",
    )
    parser.add_argument("--slices", type=int, default=8, help="timed slices per client [8]")
    parser.add_argument("--memories", type=int, default=NUM_MASKMEM, help=f"memory slots in use [{NUM_MASKMEM}]")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8], help="client counts [1 8]")
    parser.add_argument(
        "--settings",
        nargs="+",
        choices=sorted(SETTINGS),
        default=list(SETTINGS),
        help="batching settings to compare [before after]",
    )
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads per Triton model [2]")
    args = parser.parse_args(argv)
    if args.slices < 1 or args.memories < 1 or args.threads < 1 or min(args.concurrency) < 1:
        parser.error("--slices, --memories, --threads and --concurrency must be >= 1")

    results = []
    loadavg = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="medsam2-triton-latency-") as tmp:
        onnx_dir = args.onnx_dir or export_graphs(Path(tmp), None)
        inputs = [tracked_inputs(args.memories, seed) for seed in range(8)]
        for name in args.settings:
            options = SETTINGS[name]
            with serve_cpu_repository(onnx_dir, Path(tmp) / name, threads=args.threads, options=options) as server:
                backend = TritonBackend(server.url, timeout_s=600)
                try:
                    backend.run(Stage.TRACK_STEP, inputs[0])  # untimed warm-up
                    for clients in args.concurrency:
                        row = run_concurrent(backend, inputs, clients, args.slices)
                        row |= {
                            "setting": name,
                            "preferred_batch_sizes": list(options.preferred_batch_sizes),
                            "max_queue_delay_us": options.max_queue_delay_us,
                        }
                        results.append(row)
                        print(
                            f"{name:7s} c={clients:<3d} p50 {row['p50_s']:.3f} s  p99 {row['p99_s']:.3f} s  "
                            f"{row['slices_per_s']:.2f} slices/s",
                            flush=True,
                        )
                finally:
                    backend.close()
    print(
        json.dumps(
            {
                "memories": args.memories,
                "slices_per_client": args.slices,
                "threads": args.threads,
                "loadavg_before": loadavg,
                "loadavg_after": os.getloadavg(),
                "results": results,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
