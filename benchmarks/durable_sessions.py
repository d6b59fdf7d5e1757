"""What durable sessions cost: store bytes per session, added latency per AddPrompt, rebuild time per slice.

Starts Debian's ``redis-server`` on loopback (stopped at the end) and two in-process servers on the embedded
backend: one with ``memory://`` and one with the Redis store. It then measures:

- ``store_bytes``: the Redis memory of a session holding an uploaded CT-like study of ``--slices`` slices of
  512x512 int16 (compressed in the store), and of a PACS reference (the header only);
- ``add_prompt_ms``: the median AddPrompt time with each store, alternating, on the same study;
- ``rebuild``: after a propagation on the durable server, a second durable server answers GetSession for that
  session: the time of that first call (open the study, replay the box and the propagation) per slice, against
  the original propagation's time per slice.

    PYTHONPATH=services:export:tests/integration .venv/bin/python benchmarks/durable_sessions.py --graphs GRAPHS

Prints one JSON object. A measurement, not a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import redis as redis_client

from medsam2.api.client import Client
from medsam2.api.pb.medsam2.v1 import segmentation_pb2 as pb
from medsam2.backends.onnxruntime_backend import OnnxRuntimeBackend
from medsam2.server.app import start_server
from medsam2.server.config import ServerSettings
from redis_server import RedisServer


def ct_like(slices: int, size: int, seed: int) -> np.ndarray:
    """A body-like int16 volume in HU: air outside an ellipse of soft tissue with noise and a bright lesion."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[0:slices, 0:size, 0:size]
    body = ((y - size / 2) / (0.4 * size)) ** 2 + ((x - size / 2) / (0.45 * size)) ** 2 <= 1
    volume = np.where(body, 40 + rng.normal(0, 20, body.shape), -1000).astype(np.int16)
    lesion = ((z - slices / 2) / (0.2 * slices)) ** 2 + ((y - 0.4 * size) / 30) ** 2 + ((x - 0.55 * size) / 30) ** 2
    volume[lesion <= 1] += 80
    return volume


def session_bytes(url_client: redis_client.Redis, session_id: str) -> int:
    """Redis's own count of the memory held by the session's keys."""
    return sum(int(url_client.memory_usage(key) or 0) for key in url_client.scan_iter(f"m2:{{{session_id}}}:*"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graphs", type=Path, required=True)
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--propagate-slices", type=int, default=8, help="slices of the propagation that is rebuilt")
    parser.add_argument("--prompts", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = RedisServer(Path(tmp) / "redis", appendonly=True).start()
        servers = []
        try:
            base = dict(port=0, metrics_port=0, model_repository=args.graphs, max_state_bytes=16 * 2**30)
            memory = start_server(ServerSettings(**base), OnnxRuntimeBackend(args.graphs, threads=2))
            durable = start_server(
                ServerSettings(**base, session_store=store.url), OnnxRuntimeBackend(args.graphs, threads=2)
            )
            servers += [memory, durable]
            raw = redis_client.Redis.from_url(store.url)
            volume = ct_like(args.slices, 512, 1)
            on_memory, on_durable = Client(f"127.0.0.1:{memory.port}"), Client(f"127.0.0.1:{durable.port}")
            upload = on_durable.create_session(volume, (2.0, 0.8, 0.8), preset="abdomen", modality="CT")
            pacs_header = pb.StudyHeader(pacs=pb.PacsReference(endpoint="pacs", study_uid="1.2.3", series_uid="4.5"))
            raw.hset("m2:{pacs-ref}:record", mapping={"owner": "anonymous", "header": pacs_header.SerializeToString()})
            figures: dict = {
                "store_bytes": {
                    f"upload_{args.slices}x512x512_int16": session_bytes(raw, upload.session_id),
                    "upload_raw_bytes": volume.nbytes,
                    "pacs_reference": session_bytes(raw, "pacs-ref"),
                }
            }
            # AddPrompt latency, alternating stores, on one small study each.
            small = volume[:: max(1, args.slices // args.propagate_slices)][: args.propagate_slices]
            box = (200.0, 150.0, 330.0, 280.0)
            key = len(small) // 2
            ids = {
                "memory": (on_memory, on_memory.create_session(small, preset="abdomen", modality="CT").session_id),
                "redis": (on_durable, on_durable.create_session(small, preset="abdomen", modality="CT").session_id),
            }
            times: dict[str, list[float]] = {"memory": [], "redis": []}
            for _ in range(args.prompts):
                for name, (client, sid) in ids.items():
                    started = time.perf_counter()
                    client.add_box(sid, 1, key, box)
                    times[name].append(time.perf_counter() - started)
            figures["add_prompt_ms"] = {name: round(1000 * statistics.median(t), 2) for name, t in times.items()}
            figures["add_prompt_added_ms"] = round(
                figures["add_prompt_ms"]["redis"] - figures["add_prompt_ms"]["memory"], 2
            )
            # Rebuild: propagate on the durable server, then ask a fresh durable server for the same session.
            client, sid = ids["redis"]
            started = time.perf_counter()
            streamed = len(list(client.propagate(sid)))
            propagate_s = time.perf_counter() - started
            second = start_server(
                ServerSettings(**base, session_store=store.url), OnnxRuntimeBackend(args.graphs, threads=2)
            )
            servers.append(second)
            on_second = Client(f"127.0.0.1:{second.port}")
            started = time.perf_counter()
            on_second.get_session(sid)
            rebuild_s = time.perf_counter() - started
            figures["rebuild"] = {
                "slices_streamed": streamed,
                "propagate_s_per_slice": round(propagate_s / streamed, 3),
                "rebuild_s_per_slice": round(rebuild_s / streamed, 3),
                "ratio": round(rebuild_s / propagate_s, 3),
            }
            print(json.dumps(figures))
        finally:
            for running in servers:
                running.stop(0)
            store.stop()


if __name__ == "__main__":
    main()
