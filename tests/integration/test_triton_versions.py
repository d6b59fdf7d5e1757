"""Model versions through a real Triton: pinned ensembles, explicit model control, sessions keep their version."""

from __future__ import annotations

import hashlib
from pathlib import Path

import grpc
import numpy as np
import pytest

from medsam2.api.client import Client
from medsam2.errors import NotFound
from medsam2.models.provenance import ModelProvenance, write_provenance
from medsam2.server.app import make_backend, start_server
from medsam2.server.config import ServerSettings
from medsam2.server.triton_versions import TritonVersions
from medsam2.server.versions import VersionedBackends
from medsam2_export.parity import synthetic_volume
from medsam2_export.triton_cpu import TritonProcess, write_cpu_repository
from test_model_versions import reference_mask
from triton_server import START_TIMEOUT_S, require_triton

pytestmark = pytest.mark.slow

SLICES, ROWS, COLS = 5, 40, 48


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _add_version(repo: Path, graphs: Path, checkpoint: Path, version: int, env: Path) -> None:
    """Version ``version`` of the CPU repository, with its checkpoint's provenance (what names it in results)."""
    write_cpu_repository(graphs, repo, env, threads=1, version=version)
    write_provenance(repo, ModelProvenance(version=version, checkpoint_sha256=_sha256(checkpoint), untrained=True))


def _segment(client: Client, session_id: str, box) -> np.ndarray:
    client.add_box(session_id, 1, 2, (box.x0, box.y0, box.x1, box.y1))
    list(client.propagate(session_id))
    labels, _ = client.result_labels(session_id)
    return labels > 0


def test_triton_sessions_keep_their_version_across_a_switch(graphs, checkpoints, tmp_path: Path) -> None:
    install = require_triton()
    frames, boxes = synthetic_volume(seed=3, slices=SLICES, height=ROWS, width=COLS)
    expected = {name: reference_mask(graphs[name], frames, boxes[0]) for name in ("present", "absent")}
    assert not np.array_equal(expected["present"], expected["absent"])  # the two versions are told apart
    repo = tmp_path / "repository"
    _add_version(repo, graphs["present"], checkpoints["present"], 1, install.env)
    triton = TritonProcess(repo, install, model_control="explicit", log_path=tmp_path / "tritonserver.log")
    running = None
    # A service that starts before Triton (as pods do) waits for it to choose its pinned version.
    early = make_backend(ServerSettings(triton_url=triton.url, model_version=1), 1)
    try:
        assert isinstance(early, VersionedBackends) and early.current_version is None and not early.is_ready()
        triton.start(START_TIMEOUT_S)
        assert early.is_ready() and early.current_version == 1 and early.available() == [1]
        early.close()
        settings = ServerSettings(
            port=0, metrics_port=0, triton_url=triton.url, model_repository=repo, admin_principals="anonymous"
        )
        backend = make_backend(settings, 1)
        assert isinstance(backend, VersionedBackends) and backend.current_version == 1
        running = start_server(settings, backend, metrics_server=False)
        client = Client(f"127.0.0.1:{running.port}")
        old = client.create_session(frames, preset="none")
        assert old.model.version == 1 and old.model.checkpoint_sha256 == _sha256(checkpoints["present"])

        # Version 2 appears in the repository after Triton started: the switch has Triton load it.
        _add_version(repo, graphs["absent"], checkpoints["absent"], 2, install.env)
        info = client.set_model_version(0)
        assert info.model.version == 2 and list(info.model_versions) == [1, 2]
        assert info.model.checkpoint_sha256 == _sha256(checkpoints["absent"])
        new = client.create_session(frames, preset="none")
        assert new.model.version == 2

        # The old session, prompted and propagated after the switch, still runs version 1 in Triton.
        np.testing.assert_array_equal(_segment(client, old.session_id, boxes[0]), expected["present"])
        np.testing.assert_array_equal(_segment(client, new.session_id, boxes[0]), expected["absent"])
        described = client.get_session(old.session_id)
        assert described.model.version == 1 and described.model_version == _sha256(checkpoints["present"])[:12]
        assert backend.loaded() == {1: 1, 2: 1}

        # Roll back: version 1 is still loaded in Triton, so new sessions get it at once.
        assert client.set_model_version(1).model.version == 1
        again = client.create_session(frames, preset="none")
        np.testing.assert_array_equal(_segment(client, again.session_id, boxes[0]), expected["present"])
        with pytest.raises(grpc.RpcError) as missing:
            client.set_model_version(5)
        assert missing.value.code() is grpc.StatusCode.NOT_FOUND
        assert "model version 5 is not served by Triton" in missing.value.details()
        assert "it serves version(s) 1, 2" in missing.value.details()
        client.close()

        # Pinning at start: a version Triton serves, or a clear error naming those it does.
        pinned = make_backend(ServerSettings(triton_url=triton.url, model_version=1), 1)
        try:
            assert isinstance(pinned, VersionedBackends) and pinned.current_version == 1
        finally:
            pinned.close()
        with pytest.raises(NotFound, match=r"model version 4 is not served by Triton .* it serves version\(s\) 1, 2"):
            make_backend(ServerSettings(triton_url=triton.url, model_version=4), 1)
        catalog = TritonVersions(triton.url)
        try:
            assert catalog.available() == [1, 2]
        finally:
            catalog.close()
    finally:
        if running is not None:
            running.stop(1)
        triton.stop()
