"""Traffic and time per propagated slice through Triton: the fused ``track_step`` ensemble vs stage by stage.

Serves the CPU (Python-backend) repository with the ``tritonserver`` that
``scripts/test_deps.sh`` installs, puts a byte-counting TCP relay between the
client and Triton's gRPC port, and runs tracked slices with a full memory bank
(7 memories by default) through ``TritonBackend``. For each path it reports the
bytes on the wire per slice (both directions, gRPC/HTTP2 framing included), the
tensor payload, the round trips (gRPC calls) per slice and the seconds per call,
plus the same composition in ONNX Runtime in-process for scale. Prints a table
and one JSON object. Needs the export toolchain only when it exports graphs.

    .venv/bin/python benchmarks/triton_track_step.py [--onnx-dir DIR] [--slices 8] [--memories 7]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from medsam2.backends.onnxruntime_backend import OnnxRuntimeBackend
from medsam2.backends.triton_backend import TritonBackend
from medsam2.engine.resize import from_bfloat16_bits, to_bfloat16_bits
from medsam2.graphs import NUM_MASKMEM, TRACK_STEP, TRACK_STEP_WIRING, Stage
from medsam2.testing.composed_backend import broadcast_features
from medsam2_export.triton_cpu import free_port, serve_cpu_repository

Step = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


class ByteCountingRelay:
    """A loopback TCP relay to ``target_port`` that counts the bytes it carries each way."""

    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.host, self.target_port = host, target_port
        self.port = free_port(host)
        self.sent = self.received = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server((host, self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def reset(self) -> tuple[int, int]:
        """Return (client to server, server to client) bytes so far and start counting from zero."""
        with self._lock:
            counts, self.sent, self.received = (self.sent, self.received), 0, 0
        return counts

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection((self.host, self.target_port))
            for src, dst, upward in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pump, args=(src, dst, upward), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upward: bool) -> None:
        try:
            while data := src.recv(1 << 20):
                with self._lock:  # counted before forwarding, so a returned call has all its bytes counted
                    if upward:
                        self.sent += len(data)
                    else:
                        self.received += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        """Stop accepting connections."""
        self._listener.close()


def tracked_inputs(memories: int, seed: int) -> dict[str, np.ndarray]:
    """One tracked slice of one object: a random uint8 slice, a full memory bank, every pointer slot in use."""
    from medsam2_export.onnx_export import sample_inputs

    inputs = sample_inputs(TRACK_STEP, batch=1, slots=memories, seed=seed)
    inputs["memory_valid"][:] = 1.0
    inputs["memory_tpos"][:] = np.arange(memories) % NUM_MASKMEM
    inputs["obj_ptr_valid"][:] = 1.0
    inputs["no_memory"][:] = 0.0
    inputs["point_labels"][:] = -2  # tracked frames carry no clicks
    inputs["has_mask_input"][:] = 0.0
    inputs["mask_input"][:] = 0.0
    # Memories as the engine keeps them (bfloat16 values): they travel to Triton as bfloat16.
    inputs["memory"] = from_bfloat16_bits(to_bfloat16_bits(inputs["memory"]))
    return inputs


def stage_by_stage(run: Callable[[Stage, dict[str, np.ndarray]], dict[str, np.ndarray]]) -> Step:
    """The ensemble's wiring executed as one call per stage."""

    def step(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tensors = dict(inputs)
        for stage, input_map, output_map in TRACK_STEP_WIRING:
            feeds = {port: tensors[name] for port, name in input_map.items()}
            # Stage by stage, the engine repeats the features per object itself, as the broadcast step does.
            outputs = broadcast_features(feeds) if stage is Stage.FEATURE_BROADCAST else run(stage, feeds)
            tensors |= {name: outputs[port] for port, name in output_map.items()}
        return {t.name: tensors[t.name] for t in TRACK_STEP.outputs}

    return step


class CallCounter:
    """Wraps ``backend.run`` to count calls and the tensor bytes that go in and come out."""

    def __init__(self, run: Callable[[Stage, dict[str, np.ndarray]], dict[str, np.ndarray]]) -> None:
        self._run, self.calls, self.payload = run, 0, 0

    def __call__(self, stage: Stage, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self._run(stage, inputs)
        self.calls += 1
        self.payload += sum(a.nbytes for a in inputs.values()) + sum(a.nbytes for a in outputs.values())
        return outputs


class Route:
    """One way of running a tracked slice, with what it cost so far."""

    def __init__(self, name: str, step: Step, counter: CallCounter | None = None) -> None:
        self.name, self.step, self.counter = name, step, counter
        self.seconds: list[float] = []
        self.wire: list[tuple[int, int]] = []

    def summary(self) -> dict[str, object]:
        """Per-slice figures: median and minimum seconds, round trips and bytes."""
        n = len(self.seconds)
        out: dict[str, object] = {
            "path": self.name,
            "s_per_slice_median": statistics.median(self.seconds),
            "s_per_slice_min": min(self.seconds),
        }
        if self.counter is not None:
            sent = sum(s for s, _ in self.wire) / n
            received = sum(r for _, r in self.wire) / n
            out |= {
                "round_trips_per_slice": self.counter.calls / n,
                "bytes_sent_per_slice": sent,
                "bytes_received_per_slice": received,
                "wire_bytes_per_slice": sent + received,
                "payload_bytes_per_slice": self.counter.payload / n,
            }
        return out


def measure(routes: list[Route], relay: ByteCountingRelay, slices: list[dict[str, np.ndarray]]) -> None:
    """Run every slice through every path, alternating, so that background load slows all paths alike."""
    for route in routes:  # untimed warm-up
        route.step(slices[0])
        if route.counter is not None:
            route.counter.calls = route.counter.payload = 0
    for inputs in slices:
        for route in routes:
            relay.reset()
            start = time.perf_counter()
            route.step(inputs)
            route.seconds.append(time.perf_counter() - start)
            route.wire.append(relay.reset())


def export_graphs(folder: Path, checkpoint: Path | None) -> Path:
    """ONNX graphs of ``checkpoint``, or of a seeded untrained one (speed and traffic do not depend on weights)."""
    from medsam2_export.model import load_model, write_random_checkpoint
    from medsam2_export.onnx_export import export_all

    if checkpoint is None:
        checkpoint = write_random_checkpoint(2026, folder / "untrained.pt", "present").path
    export_all(load_model(checkpoint), folder / "onnx")
    return folder / "onnx"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--onnx-dir",
        type=Path,
        help="folder of <stage>.onnx files or a model repository (default: export an untrained checkpoint afresh)",
    )
    parser.add_argument("--checkpoint", type=Path, help="checkpoint to export when --onnx-dir is not given")
    parser.add_argument("--slices", type=int, default=8, help="timed slices per path [8]")
    parser.add_argument("--memories", type=int, default=NUM_MASKMEM, help=f"memory slots in use [{NUM_MASKMEM}]")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads per Triton model [2]")
    args = parser.parse_args(argv)
    if args.slices < 1 or args.memories < 1 or args.threads < 1:
        parser.error("--slices, --memories and --threads must be >= 1")

    loadavg = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="medsam2-triton-bench-") as tmp:
        onnx_dir = args.onnx_dir or export_graphs(Path(tmp), args.checkpoint)
        slices = [tracked_inputs(args.memories, seed) for seed in range(args.slices)]
        with serve_cpu_repository(onnx_dir, Path(tmp) / "triton", threads=args.threads) as server:
            relay = ByteCountingRelay(server.ports.grpc)
            triton = TritonBackend(f"127.0.0.1:{relay.port}")
            try:
                fused = CallCounter(triton.run)
                staged = CallCounter(triton.run)
                routes = [
                    Route("triton track_step ensemble", lambda x: fused(Stage.TRACK_STEP, x), fused),
                    Route("triton stage by stage", stage_by_stage(staged), staged),
                    Route("onnxruntime in-process", stage_by_stage(OnnxRuntimeBackend(onnx_dir, args.threads).run)),
                ]
                measure(routes, relay, slices)
            finally:
                triton.close()
                relay.close()
        rows = [r.summary() for r in routes]

    print(f"{'path':30s} {'s/slice':>8s} {'round trips':>12s} {'sent MB':>8s} {'recv MB':>8s} {'wire MB':>8s}")
    for r in rows:
        if "wire_bytes_per_slice" in r:
            print(
                f"{r['path']:30s} {r['s_per_slice_median']:8.3f} {r['round_trips_per_slice']:12.0f} "
                f"{r['bytes_sent_per_slice'] / 1e6:8.3f} {r['bytes_received_per_slice'] / 1e6:8.3f} "
                f"{r['wire_bytes_per_slice'] / 1e6:8.3f}"
            )
        else:
            print(f"{r['path']:30s} {r['s_per_slice_median']:8.3f}")
    print(
        json.dumps(
            {
                "memories": args.memories,
                "slices": args.slices,
                "threads": args.threads,
                "loadavg_before": loadavg,
                "loadavg_after": os.getloadavg(),
                "paths": rows,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
