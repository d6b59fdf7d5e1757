"""Soak the session service in-process: does memory come back, and does it keep working under churn?

Two loops against one in-process server on the embedded backend (RSS is this process's, server included):

- ``cycles``: create and close ``--cycles`` sessions of ``--slices``-slice studies from ``--threads`` threads;
  prints RSS after the first ``--warmup`` cycles and at the end (after a garbage collection), and their ratio.
- ``work``: ``--threads`` threads (each its own principal) loop create, box prompt, propagate, result, close for ``--seconds``;
  prints sessions and slices per second, errors by status code, and RSS at the start and the end.

    .venv/bin/python benchmarks/soak.py --model-repository GRAPHS cycles --cycles 1000 --slices 64
    .venv/bin/python benchmarks/soak.py --model-repository GRAPHS work --threads 4 --seconds 300

GRAPHS is a folder of exported graphs (``medsam2 export``; the tests' ``graphs`` fixture makes one).
Prints one JSON object. Not run in CI (tests/integration/test_soak.py runs a short version with a bound).
"""  # noqa: E501

from __future__ import annotations

import argparse
import collections
import gc
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np

from medsam2.api.client import Client
from medsam2.backends.onnxruntime_backend import OnnxRuntimeBackend
from medsam2.server.app import RunningServer, start_server
from medsam2.server.config import ServerSettings


def rss_bytes() -> int:
    """Resident set size of this process."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def settled_rss() -> int:
    """RSS after a full garbage collection."""
    gc.collect()
    return rss_bytes()


def tokens_file(folder: Path, count: int) -> tuple[Path, list[str]]:
    """A tokens file of ``count`` principals (soak0..), and their tokens: each soak thread is its own tenant."""
    tokens = [f"soak-token-{i}" for i in range(count)]
    path = folder / "tokens"
    path.write_text("".join(f"soak{i}:{token}\n" for i, token in enumerate(tokens)))
    return path, tokens


def start(model_repository: Path, **overrides) -> tuple[RunningServer, str]:
    """An in-process server on a free port."""
    settings = ServerSettings(port=0, metrics_port=0, health_port=-1, model_repository=model_repository, **overrides)
    running = start_server(settings, OnnxRuntimeBackend(model_repository, threads=2), metrics_server=False)
    return running, f"127.0.0.1:{running.port}"


def study(slices: int, rows: int, columns: int, seed: int = 0) -> np.ndarray:
    """A uint8 study with a bright disc on every slice (enough for a box prompt to find something)."""
    rng = np.random.default_rng(seed)
    volume = rng.integers(0, 60, (slices, rows, columns), dtype=np.uint8)
    yy, xx = np.mgrid[:rows, :columns]
    disc = (yy - rows / 2) ** 2 + (xx - columns / 2) ** 2 < (min(rows, columns) / 4) ** 2
    volume[:, disc] = 200
    return volume


def run_cycles(
    target: str,
    *,
    cycles: int,
    warmup: int,
    slices: int,
    rows: int,
    columns: int,
    threads: int = 1,
    tokens: list[str] | None = None,
) -> dict[str, object]:
    """Create and close ``cycles`` sessions; RSS after ``warmup`` cycles and at the end."""
    volume = study(slices, rows, columns)
    done = 0
    lock = threading.Lock()
    warm = threading.Event()
    marks: dict[str, int] = {}
    errors: collections.Counter[str] = collections.Counter()

    def loop(token: str) -> None:
        nonlocal done
        client = Client(target, token=token)
        try:
            while True:
                with lock:
                    if done >= cycles:
                        return
                    done += 1
                    number = done
                try:
                    sid = client.create_session(volume, preset="none").session_id
                    client.close_session(sid)
                except grpc.RpcError as exc:
                    errors[exc.code().name] += 1
                if number == warmup:
                    warm.set()
        finally:
            client.close()

    started = time.perf_counter()
    workers = [threading.Thread(target=loop, args=((tokens or [""] * threads)[i],)) for i in range(threads)]
    for w in workers:
        w.start()
    warm.wait()
    marks["rss_after_warmup"] = settled_rss()
    for w in workers:
        w.join()
    marks["rss_end"] = settled_rss()
    seconds = time.perf_counter() - started
    return {
        "cycles": cycles,
        "warmup": warmup,
        "slices": slices,
        "shape": [slices, rows, columns],
        "threads": threads,
        "seconds": round(seconds, 1),
        "cycles_per_s": round(cycles / seconds, 2),
        "errors": dict(errors),
        **marks,
        "rss_ratio_end_to_warmup": round(marks["rss_end"] / marks["rss_after_warmup"], 4),
    }


def run_work(
    target: str, *, threads: int, seconds: float, slices: int, rows: int, columns: int, tokens: list[str] | None = None
) -> dict[str, object]:
    """Loop create/prompt/propagate/result/close from ``threads`` threads (thread i with ``tokens[i]``)."""
    volume = study(slices, rows, columns)
    box = (columns // 4, rows // 4, 3 * columns // 4, 3 * rows // 4)
    stop = time.monotonic() + seconds
    counts: collections.Counter[str] = collections.Counter()
    errors: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    marks: dict[str, int] = {}

    def loop(token: str) -> None:
        client = Client(target, token=token)
        try:
            while time.monotonic() < stop:
                try:
                    sid = client.create_session(volume, preset="none").session_id
                    client.add_box(sid, 1, slices // 2, box)
                    streamed = sum(1 for _ in client.propagate(sid))
                    client.result_labels(sid)
                    client.close_session(sid)
                    with lock:
                        counts["sessions"] += 1
                        counts["slices"] += streamed
                        if counts["sessions"] == threads:  # every thread has been through once: warm
                            marks["rss_after_first_round"] = rss_bytes()
                except grpc.RpcError as exc:
                    with lock:
                        errors[exc.code().name] += 1
        finally:
            client.close()

    rss_start = settled_rss()
    started = time.perf_counter()
    workers = [threading.Thread(target=loop, args=((tokens or [""] * threads)[i],)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - started
    return {
        "threads": threads,
        "seconds": round(elapsed, 1),
        "shape": [slices, rows, columns],
        "sessions": counts["sessions"],
        "slices": counts["slices"],
        "sessions_per_s": round(counts["sessions"] / elapsed, 3),
        "slices_per_s": round(counts["slices"] / elapsed, 2),
        "errors": dict(errors),
        "rss_start": rss_start,
        **marks,
        "rss_end": settled_rss(),
    }


def main(argv: list[str] | None = None) -> int:
    """Run one soak and print its JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repository", type=Path, required=True)
    parser.add_argument("--rows", type=int, default=128)
    parser.add_argument("--columns", type=int, default=128)
    sub = parser.add_subparsers(dest="mode", required=True)
    cycles = sub.add_parser("cycles")
    cycles.add_argument("--cycles", type=int, default=1000)
    cycles.add_argument("--warmup", type=int, default=100)
    cycles.add_argument("--slices", type=int, default=64)
    cycles.add_argument("--threads", type=int, default=2)
    work = sub.add_parser("work")
    work.add_argument("--threads", type=int, default=4)
    work.add_argument("--seconds", type=float, default=120.0)
    work.add_argument("--slices", type=int, default=8)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        tokens_path, tokens = tokens_file(Path(folder), args.threads)
        running, target = start(args.model_repository, auth_tokens=tokens_path)
        try:
            if args.mode == "cycles":
                report = run_cycles(
                    target,
                    cycles=args.cycles,
                    warmup=args.warmup,
                    slices=args.slices,
                    rows=args.rows,
                    columns=args.columns,
                    threads=args.threads,
                    tokens=tokens,
                )
            else:
                report = run_work(
                    target,
                    threads=args.threads,
                    seconds=args.seconds,
                    slices=args.slices,
                    rows=args.rows,
                    columns=args.columns,
                    tokens=tokens,
                )
        finally:
            running.stop(1)
    json.dump({"mode": args.mode, **report}, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
