"""Model versions in the service: the newest loads at start, a switch keeps open sessions on their version."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from medsam2.api.client import Client
from medsam2.backends.onnxruntime_backend import OnnxRuntimeBackend
from medsam2.engine.protocols import ObjectPrompt, segment_volume
from medsam2.engine.tracker import Tracker
from medsam2.errors import NotFound
from medsam2.graphs import GRAPHS
from medsam2.models.versions import choose_version
from medsam2.server.app import make_backend, start_server
from medsam2.server.config import ServerSettings
from medsam2.server.versions import VersionedBackends
from medsam2_export import model_repository
from medsam2_export.parity import synthetic_volume

SLICES, ROWS, COLS = 5, 40, 48


def _add_version(repo: Path, graphs: Path, version: int) -> None:
    model_repository.write_model_repository(
        repo, "onnxruntime", {s: graphs / f"{s.value}.onnx" for s in GRAPHS}, version=version
    )


def _segment(client: Client, session_id: str, box) -> np.ndarray:
    client.add_box(session_id, 1, 2, (box.x0, box.y0, box.x1, box.y1))
    list(client.propagate(session_id))
    labels, _ = client.result_labels(session_id)
    return labels > 0


def test_a_switch_keeps_open_sessions_on_their_version(graphs, tmp_path: Path) -> None:
    frames, boxes = synthetic_volume(seed=3, slices=SLICES, height=ROWS, width=COLS)
    expected = {
        name: segment_volume(
            Tracker(OnnxRuntimeBackend(graphs[name], threads=2), frames), [ObjectPrompt(1, 2, box=boxes[0])]
        )[1]
        for name in ("present", "absent")
    }
    assert not np.array_equal(expected["present"], expected["absent"])  # the two versions are told apart
    repo = tmp_path / "repo"
    _add_version(repo, graphs["present"], 1)
    settings = ServerSettings(port=0, metrics_port=0, model_repository=repo)
    backend = make_backend(settings, 2)
    assert isinstance(backend, VersionedBackends) and backend.current_version == 1
    running = start_server(settings, backend, metrics_server=False)
    client = Client(f"127.0.0.1:{running.port}")
    try:
        old = client.create_session(frames, preset="none")
        _add_version(repo, graphs["absent"], 2)
        assert backend.switch() == 2  # what SIGHUP does
        new = client.create_session(frames, preset="none")
        versions = {e.session_id: e.model_version for e in running.registry.list()}
        assert versions == {old.session_id: 1, new.session_id: 2}
        # The old session started before the switch, is prompted after it, and still runs version 1.
        np.testing.assert_array_equal(_segment(client, old.session_id, boxes[0]), expected["present"])
        np.testing.assert_array_equal(_segment(client, new.session_id, boxes[0]), expected["absent"])
        assert backend.loaded() == {1: 1, 2: 1}
        assert client.close_session(old.session_id)
        assert backend.loaded() == {2: 1}  # version 1 unloads with its last session
        assert backend.provenance(2) is not None and backend.provenance(2).version == 2
    finally:
        client.close()
        running.stop(1)


def test_choose_version_names_what_exists(graphs, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    _add_version(repo, graphs["present"], 1)
    _add_version(repo, graphs["present"], 3)
    assert choose_version(repo)[0] == 3 and choose_version(repo, 1)[0] == 1
    with pytest.raises(NotFound, match="model version 2 is not in .* it has 1, 3"):
        choose_version(repo, 2)
    assert choose_version(graphs["present"]) == (None, None)  # a flat folder of graphs


def test_sighup_switches_a_running_medsam2_serve(graphs, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    _add_version(repo, graphs["present"], 1)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "medsam2.cli.main",
            "--log-level",
            "INFO",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--metrics-port",
            "0",
            "--model-repository",
            str(repo),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        lines = _read_until(proc, "listening on")
        assert any("model version 1 is current" in line for line in lines)
        _add_version(repo, graphs["absent"], 2)
        proc.send_signal(signal.SIGHUP)
        _read_until(proc, "model version 2 is current (was 1)")
    finally:
        proc.terminate()
        proc.wait(30)


def _read_until(proc: subprocess.Popen, text: str, timeout_s: float = 120) -> list[str]:
    lines, deadline = [], time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"server exited before {text!r}: {''.join(lines)}")
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"no {text!r} within {timeout_s} s: {''.join(lines)}")
