"""Batching across sessions in Triton: batch sizes reached and throughput with N concurrent sessions against 1.

Each session tracks one object through ``--slices`` slices (one ``track_step`` per slice, memory banks of one
size so that Triton may merge them). Triton's own statistics give the batch sizes (inferences / executions per
model). CPU Triton here, so the throughput ratio is this machine's, not a GPU's; on a shared machine it is rough.

    PYTHONPATH=services:export:benchmarks .venv/bin/python benchmarks/triton_sessions.py [--onnx-dir DIR] \
        [--sessions 8] [--slices 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from triton_track_step import export_graphs, tracked_inputs

from medsam2.backends.triton_backend import TritonBackend
from medsam2.graphs import Stage
from medsam2_export.triton_cpu import serve_cpu_repository

MODELS = ("image_encoder", "feature_broadcast", "memory_attention", "sam_heads", "memory_encoder")


def _counts(url: str) -> dict[str, tuple[int, int]]:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        out = {}
        for model in MODELS:
            stats = client.get_inference_statistics(model_name=model, as_json=True).get("model_stats", [])
            out[model] = (
                sum(int(e.get("inference_count", 0)) for e in stats),
                sum(int(e.get("execution_count", 0)) for e in stats),
            )
        return out
    finally:
        client.close()


def _run(backend: TritonBackend, url: str, sessions: int, slices: int) -> tuple[float, dict[str, float]]:
    """Slices per second over all sessions, and the mean batch size per model."""
    inputs = [[tracked_inputs(7, 100 * s + k) for k in range(slices)] for s in range(sessions)]
    before = _counts(url)
    start = time.perf_counter()
    with ThreadPoolExecutor(sessions) as pool:
        list(pool.map(lambda steps: [backend.run(Stage.TRACK_STEP, x) for x in steps], inputs))
    elapsed = time.perf_counter() - start
    after = _counts(url)
    batches = {}
    for model in MODELS:
        inferences, executions = (a - b for a, b in zip(after[model], before[model], strict=True))
        batches[model] = inferences / max(executions, 1)
    return sessions * slices / elapsed, batches


def main(argv: list[str] | None = None) -> int:
    """Run 1 session, then N at once, and print batch sizes and throughput."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx-dir", type=Path, default=None)
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--slices", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="medsam2-sessions-") as tmp:
        onnx_dir = args.onnx_dir or export_graphs(Path(tmp), None)
        with serve_cpu_repository(onnx_dir, Path(tmp) / "triton", threads=args.threads) as server:
            backend = TritonBackend(server.url, timeout_s=600)
            try:
                backend.run(Stage.TRACK_STEP, tracked_inputs(7, 0))  # untimed warm-up
                one, one_batches = _run(backend, server.url, 1, args.slices)
                many, many_batches = _run(backend, server.url, args.sessions, args.slices)
            finally:
                backend.close()
    print(f"{'model':<20}{'batch, 1 session':>18}{f'batch, {args.sessions} sessions':>22}")
    for model in MODELS:
        print(f"{model:<20}{one_batches[model]:>18.2f}{many_batches[model]:>22.2f}")
    print(f"throughput: 1 session {one:.2f} slices/s, {args.sessions} sessions {many:.2f} slices/s ({many / one:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
