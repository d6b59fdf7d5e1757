"""Load test: N concurrent sessions against `medsam2 serve` over loopback (a benchmark, not a test).

Prints throughput (slices/s), per-slice latency percentiles, the server's RSS per
idle and per active session, and the per-slice overhead of the gRPC path
against the engine called directly on the same study, measured in this run.

    .venv/bin/python benchmarks/load_test.py --graphs DIR [--sessions 8] [--slices 12] [--size 256]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from medsam2.api.client import Client
from medsam2.backends.onnxruntime_backend import OnnxRuntimeBackend
from medsam2.engine.prompts import Box
from medsam2.engine.protocols import ObjectPrompt, segment_volume
from medsam2.engine.tracker import Tracker


def synthetic_study(seed: int, slices: int, size: int) -> tuple[np.ndarray, Box]:
    """A uint8 volume with one bright ellipsoid and its box on the middle slice."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(np.arange(slices), np.arange(size), np.arange(size), indexing="ij")
    inside = ((z - slices / 2) / (slices * 0.45)) ** 2 + ((y - size / 2) / (size * 0.2)) ** 2 + (
        (x - size / 2) / (size * 0.25)
    ) ** 2 <= 1
    volume = rng.normal(60, 10, (slices, size, size))
    volume[inside] = 190
    ys, xs = np.nonzero(inside[slices // 2])
    return np.clip(volume, 0, 255).astype(np.uint8), Box(xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _wait_ready(target: str, timeout_s: float = 60) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status == 1:
                    return
            except Exception:
                pass
            time.sleep(0.2)
    raise TimeoutError(f"server at {target} not ready")


def run(graphs: Path, sessions: int, slices: int, size: int, threads: int) -> dict:
    """Start a server, load it, stop it; return the figures."""
    port = _free_port()
    env = {**os.environ, "MEDSAM2_THREADS": str(threads)}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "medsam2.cli.main",
            "serve",
            "--model-repository",
            str(graphs),
            "--port",
            str(port),
            "--metrics-port",
            "0",
            "--max-sessions",
            str(sessions + 2),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    target = f"127.0.0.1:{port}"
    try:
        _wait_ready(target)
        volume, box = synthetic_study(0, slices, size)
        client = Client(target)
        warm = client.create_session(volume[:2], preset="none").session_id
        client.add_box(warm, 1, 0, (box.x0, box.y0, box.x1, box.y1))
        list(client.propagate(warm))
        client.close_session(warm)
        base_rss = _rss(server.pid)
        ids = [client.create_session(volume, preset="none").session_id for _ in range(sessions)]
        idle_rss = (_rss(server.pid) - base_rss) / sessions
        latencies: list[float] = []
        errors: list[str] = []
        peak = [0]
        lock = threading.Lock()

        def drive(sid: str) -> None:
            try:
                client.add_box(sid, 1, slices // 2, (box.x0, box.y0, box.x1, box.y1))
                last = time.perf_counter()
                for _ in client.propagate(sid):
                    now = time.perf_counter()
                    with lock:
                        latencies.append(now - last)
                        peak[0] = max(peak[0], _rss(server.pid))
                    last = now
            except Exception as exc:
                errors.append(repr(exc))

        started = time.perf_counter()
        workers = [threading.Thread(target=drive, args=(sid,)) for sid in ids]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        wall = time.perf_counter() - started
        active_rss = (peak[0] - base_rss) / sessions
        for sid in ids:
            client.close_session(sid)
        # One session through gRPC against the engine on the same study, in this run.
        sid = client.create_session(volume, preset="none").session_id
        client.add_box(sid, 1, slices // 2, (box.x0, box.y0, box.x1, box.y1))
        t = time.perf_counter()
        grpc_slices = sum(1 for _ in client.propagate(sid))
        grpc_s = (time.perf_counter() - t) / grpc_slices
        client.close_session(sid)
        client.close()
    finally:
        server.terminate()
        server.wait(30)
    tracker = Tracker(OnnxRuntimeBackend(graphs, threads=threads), volume)
    # As through the service, the key slice is already encoded by the prompt before propagation starts.
    tracker.add_prompt(1, slices // 2, box=box)
    count = [0]
    t = time.perf_counter()
    segment_volume(
        tracker, [ObjectPrompt(1, slices // 2, box=box)], on_frame=lambda *_: count.__setitem__(0, count[0] + 1)
    )
    engine_s = (time.perf_counter() - t) / count[0]
    lat = np.array(latencies)
    return {
        "sessions": sessions,
        "slices_per_session": grpc_slices,
        "slice_size": size,
        "threads": threads,
        "errors": errors,
        "throughput_slices_per_s": len(lat) / wall,
        "latency_s": {
            "p50": float(np.percentile(lat, 50)),
            "p95": float(np.percentile(lat, 95)),
            "p99": float(np.percentile(lat, 99)),
        },
        "rss_per_idle_session_bytes": int(idle_rss),
        "rss_per_active_session_bytes": int(active_rss),
        "engine_s_per_slice": engine_s,
        "grpc_s_per_slice": grpc_s,
        "grpc_overhead_fraction": (grpc_s - engine_s) / engine_s,
    }


def main() -> int:
    """Parse flags, run, print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graphs", type=Path, required=True, help="exported ONNX graphs")
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--slices", type=int, default=12)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    report = run(args.graphs, args.sessions, args.slices, args.size, args.threads)
    print(json.dumps(report, indent=2))
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
