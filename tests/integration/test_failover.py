"""Durable sessions: two `medsam2 serve` replicas share one real Redis; one is SIGKILLed and the other carries on.

The session is created, prompted and propagated on replica A; Redis itself is killed and restarted (AOF keeps
every acknowledged write); A is SIGKILLed; on replica B the same session id answers as if nothing happened:
Propagate and GetResult give A's result bit for bit, a correction works, and GetSession shows the whole history.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from medsam2.api.client import Client
from medsam2.api.pb.medsam2.v1 import segmentation_pb2 as pb
from medsam2_export.parity import synthetic_volume
from redis_server import RedisServer, unavailable_reason
from serve_process import ServeProcess

REPO = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason())),
]
SLICES = 8


def replica(graphs: Path, store_url: str, log: Path) -> ServeProcess:
    """One `medsam2 serve` child process on a free port, sharing the session store at ``store_url``."""
    return ServeProcess(graphs, log=log, env={"MEDSAM2_SESSION_STORE": store_url})


@pytest.fixture()
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", password="failover-pw", appendonly=True).start()
    yield server
    server.stop()


def labels_of(client: Client, session_id: str) -> np.ndarray:
    data, _ = client.result(session_id, pb.RESULT_FORMAT_NPZ)
    with np.load(io.BytesIO(data)) as npz:
        return npz["segs"]


def test_a_session_survives_the_loss_of_its_replica_and_a_redis_restart(
    graphs: dict[str, Path], redis: RedisServer, tmp_path: Path
) -> None:
    frames, boxes = synthetic_volume(21, slices=SLICES, height=64, width=72)
    box = boxes[0]
    key = SLICES // 2
    a = replica(graphs["present"], redis.url, tmp_path / "a.log")
    b = replica(graphs["present"], redis.url, tmp_path / "b.log")
    try:
        on_a = Client(a.target)
        session = on_a.create_session(frames, preset="none", label="failover")
        sid = session.session_id
        assert session.durable, "an upload under the store's cap is durable"
        on_a.add_box(sid, 1, key, (box.x0, box.y0, box.x1, box.y1))
        list(on_a.propagate(sid))
        before = labels_of(on_a, sid)
        assert before.any()

        redis.stop(kill=True)  # only the fsynced AOF keeps what A acknowledged
        redis.start()
        a.kill()  # SIGKILL: no drain, nothing saved on the way out
        on_a.close()

        on_b = Client(b.target)
        list(on_b.propagate(sid))  # B does not hold the session: it rebuilds it, then has nothing left to do
        after = labels_of(on_b, sid)
        assert after.dtype == before.dtype and np.array_equal(after, before), "the rebuilt result differs"

        x, y = (box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2
        on_b.add_prompt(sid, 1, key + 2, points=[(x, y, False)], correction=True)
        list(on_b.propagate(sid))
        corrected = labels_of(on_b, sid)
        assert not np.array_equal(corrected[key + 2], before[key + 2]), "the correction changed nothing"
        assert np.array_equal(corrected[: key + 1], before[: key + 1]), "slices on the key side must stay"

        described = on_b.get_session(sid)
        assert described.durable
        assert list(described.history) == [
            f"AddPrompt object 1 slice {key} box",
            "Propagate",  # on A
            "Propagate",  # on B, after the rebuild: nothing was pending, but it was acknowledged
            f"AddPrompt object 1 slice {key + 2} clicks correction",
            "Propagate",
        ]
        assert on_b.close_session(sid)
        with pytest.raises(grpc.RpcError) as gone:
            on_b.get_session(sid)
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND
        on_b.close()
    finally:
        a.kill()
        b.kill()


@contextlib.contextmanager
def in_process_replica(graphs: dict[str, Path], store_url: str, **settings: object) -> Iterator[tuple[object, Client]]:
    """One replica in this process on the shared store, with a client; both stopped at the end."""
    from medsam2.backends.onnxruntime_backend import OnnxRuntimeBackend
    from medsam2.server.app import start_server
    from medsam2.server.config import ServerSettings

    config = ServerSettings(
        port=0, metrics_port=0, model_repository=graphs["present"], session_store=store_url, **settings
    )
    running = start_server(config, OnnxRuntimeBackend(graphs["present"], threads=2))
    client = Client(f"127.0.0.1:{running.port}")
    try:
        yield running, client
    finally:
        client.close()
        running.stop(0)


def _boxed_session(client: Client, seed: int, **create: object) -> str:
    """A 4-slice study with one boxed object; its session id."""
    frames, boxes = synthetic_volume(seed, slices=4, height=48, width=56)
    sid = client.create_session(frames, preset="none", **create).session_id
    box = boxes[0]
    client.add_box(sid, 1, 2, (box.x0, box.y0, box.x1, box.y1))
    return sid


def test_a_rebuild_that_fails_leaves_no_half_replayed_session(graphs: dict[str, Path], redis: RedisServer) -> None:
    """A journal entry the engine refuses on replay: the call fails, and the next one does not see a half state."""
    from medsam2.store import JournalEntry, open_store

    with in_process_replica(graphs, redis.url) as (_, client):
        sid = _boxed_session(client, 5)
    # A correction of an object that does not exist: the engine refuses it, as it would have at the time.
    bad = pb.AddPromptRequest(session_id=sid, object_id=9, slice=1, correction=True, points=[pb.Point(x=5, y=5)])
    store = open_store(redis.url)
    store.append(sid, JournalEntry("AddPrompt", bad.SerializeToString()), ttl_s=60)
    store.close()
    with in_process_replica(graphs, redis.url) as (second, client):
        for _ in range(2):  # the second call tries again from the store instead of finding a half-built session
            with pytest.raises(grpc.RpcError) as refused:
                client.get_session(sid)
            assert refused.value.code() == grpc.StatusCode.NOT_FOUND
            assert "unknown object" in refused.value.details() or "9" in refused.value.details()
        assert not second.registry.list(principal="anonymous")


def test_concurrent_requests_rebuild_a_session_once(graphs: dict[str, Path], redis: RedisServer) -> None:
    """Four requests for a session this replica lacks: one rebuild, counted once; the others wait and use it."""
    import threading

    from medsam2.server import metrics

    with in_process_replica(graphs, redis.url) as (_, client):
        sid = _boxed_session(client, 6)
    with in_process_replica(graphs, redis.url) as (second, client):
        before = metrics.REBUILDS._value.get()
        answers: list[pb.Session] = []
        callers = [threading.Thread(target=lambda: answers.append(client.get_session(sid))) for _ in range(4)]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join(60)
        assert len(answers) == 4 and {tuple(a.object_ids) for a in answers} == {(1,)}
        assert metrics.REBUILDS._value.get() - before == 1
        assert len(second.registry.list(principal="anonymous")) == 1


def test_a_retried_save_after_a_failover_saves_nothing_twice(
    graphs: dict[str, Path], redis: RedisServer, tmp_path: Path
) -> None:
    """SaveAnnotation's reply lives in the store: the retry on another replica gets it and writes no second case."""
    store = tmp_path / "annotations"
    with in_process_replica(graphs, redis.url, annotations_dir=store) as (_, client):
        sid = _boxed_session(client, 7)
        saved = client.save_annotation(sid, request_id="save-once")
    with in_process_replica(graphs, redis.url, annotations_dir=store) as (_, client):
        assert client.save_annotation(sid, request_id="save-once") == saved
        assert len(list(store.rglob("*.npz"))) == 1
        client.save_annotation(sid, request_id="save-twice")  # a new request id is a new save
        assert len(list(store.rglob("*.npz"))) == 2


def test_a_retried_create_after_a_failover_finds_the_session(graphs: dict[str, Path], redis: RedisServer) -> None:
    """CreateSession's request id is remembered in the store: the retry on another replica opens no second session."""
    frames, _ = synthetic_volume(8, slices=3, height=40, width=40)
    with in_process_replica(graphs, redis.url) as (_, client):
        sid = client.create_session(frames, preset="none", request_id="open-once").session_id
    with in_process_replica(graphs, redis.url) as (_, client):
        assert client.create_session(frames, preset="none", request_id="open-once").session_id == sid
        assert [s.session_id for s in client.list_sessions()] == [sid]
        assert client.create_session(frames, preset="none", request_id="open-twice").session_id != sid


def test_a_rebuilt_session_keeps_its_image(graphs: dict[str, Path], redis: RedisServer) -> None:
    """keep_image travels in the stored header: the replica that rebuilds the session serves the same image."""
    frames, _ = synthetic_volume(6, slices=4, height=40, width=48)
    voxels = frames.astype(np.int16) * 3 - 500
    with in_process_replica(graphs, redis.url) as (_, client):
        session = client.create_session(voxels, (2.0, 0.5, 0.5), preset="abdomen", keep_image=True)
        assert session.durable and session.image_kept
        before = client.image(session.session_id)
    with in_process_replica(graphs, redis.url) as (_, client):
        assert client.image(session.session_id) == before  # rebuilt from the store on this miss
        assert client.get_session(session.session_id).image_kept


ROLLING_SLICES = 12
CLIENT_TIMEOUT_S = 600.0
"""The client run takes about 30 s here (a rebuild and a full propagation of 12 slices at 512x512 included);
600 s holds on a machine 5x slower under load."""


def _nifti_study(path: Path) -> tuple[Path, tuple[int, int, int, int]]:
    """A small study as NIfTI and the box of its object on the key slice (x0, y0, x1, y1)."""
    import nibabel as nib

    frames, boxes = synthetic_volume(41, slices=ROLLING_SLICES, height=48, width=56)
    # NIfTI is [x, y, z]: the [slices, rows, columns] study transposed.
    nib.save(nib.Nifti1Image(frames.astype(np.int16).transpose(2, 1, 0), np.eye(4)), str(path))
    box = boxes[0]
    return path, (int(box.x0), int(box.y0), int(box.x1), int(box.y1))


def _medsam2_client(study: Path, server: str, box: tuple[int, ...], out: Path) -> subprocess.Popen:
    from serve_process import medsam2_environment

    command = [sys.executable, "-m", "medsam2.cli.main", "client", str(study), "--server", server]
    command += ["--box", ",".join(map(str, box)), "--slice", str(ROLLING_SLICES // 2), "--preset", "none"]
    command += ["--modality", "CT", "--no-progress", "--out", str(out)]
    return subprocess.Popen(
        command, stderr=subprocess.PIPE, stdout=subprocess.PIPE, env=medsam2_environment(), text=True
    )


def _wait_until_propagating(target: str, process: subprocess.Popen, timeout_s: float) -> None:
    """Until the replica at ``target`` holds a session whose propagation runs (the client's, mid-stream)."""
    watcher = Client(target)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            assert process.poll() is None, "the client ended before its propagation could be interrupted"
            if any(s.busy and s.shape[0] == ROLLING_SLICES for s in watcher.list_sessions()):
                return
            time.sleep(0.05)
        raise AssertionError(f"no propagation started on {target} within {timeout_s:g} s")
    finally:
        watcher.close()


def test_a_rolling_restart_during_medsam2_client_gives_the_masks_of_an_uninterrupted_run(
    graphs: dict[str, Path], redis: RedisServer, tmp_path: Path
) -> None:
    """Two replicas behind one client target; the one serving the client is restarted mid-propagation.

    SIGTERM with no grace period cuts the stream at its next slice with SERVER_SHUTTING_DOWN; the client retries,
    reaches the other replica, which rebuilds the session from Redis (the cut propagation was never journaled)
    and propagates it all. The masks written equal those of an uninterrupted run bit for bit.
    """
    import nibabel as nib

    from serve_process import free_port

    study, box = _nifti_study(tmp_path / "study.nii.gz")
    port_a = free_port()
    # No grace: the stream is cut at its next slice; however slow that slice, gRPC's hard stop never comes first.
    args = ["--grace-s", "0", "--drain-end-s", "300"]
    a = ServeProcess(
        graphs["present"],
        log=tmp_path / "a.log",
        args=[*args, "--port", str(port_a)],
        env={"MEDSAM2_SESSION_STORE": redis.url},
    )
    b = ServeProcess(graphs["present"], log=tmp_path / "b.log", args=args, env={"MEDSAM2_SESSION_STORE": redis.url})
    restarted = None
    try:
        reference = _medsam2_client(study, b.target, box, tmp_path / "reference.nii.gz")
        _, err = reference.communicate(timeout=CLIENT_TIMEOUT_S)
        assert reference.returncode == 0, err

        both = f"ipv4:{a.target},{b.target}"
        client = _medsam2_client(study, both, box, tmp_path / "rolled.nii.gz")
        _wait_until_propagating(a.target, client, CLIENT_TIMEOUT_S)  # pick_first: the first address serves it
        a.process.terminate()
        assert a.process.wait(CLIENT_TIMEOUT_S) == 0, (tmp_path / "a.log").read_text()[-3000:]
        a.kill()
        # The rolling restart: A comes back on its port while the client goes on (on B, or on the new A).
        restarted = ServeProcess(
            graphs["present"],
            log=tmp_path / "a2.log",
            args=[*args, "--port", str(port_a)],
            env={"MEDSAM2_SESSION_STORE": redis.url},
        )
        _, err = client.communicate(timeout=CLIENT_TIMEOUT_S)
        assert client.returncode == 0, err
        assert "retrying" in err and "shutting down" in err, f"the propagation was not cut and retried: {err}"

        want = np.asanyarray(nib.load(str(tmp_path / "reference.nii.gz")).dataobj)
        got = np.asanyarray(nib.load(str(tmp_path / "rolled.nii.gz")).dataobj)
        assert want.any(), "the reference run found nothing: a weak comparison"
        assert got.dtype == want.dtype and np.array_equal(got, want), "the restart changed the masks"
    finally:
        for server in (a, b, restarted):
            if server is not None:
                server.kill()
