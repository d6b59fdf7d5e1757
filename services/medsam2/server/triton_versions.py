"""The model versions a Triton serves: found in its repository index, loaded through its model control.

A version N is served when every stage graph (and wire cast) is READY at version N and the ensembles pinned to
it (``track_step_vN``, see ``medsam2.graphs.pinned_ensemble_name``) are READY: the index is the one
place that says what Triton can run right now, whatever its model-control mode. A version that is in the
repository but not loaded (exported after Triton started) is loaded on demand when Triton runs with
``--model-control-mode=explicit``: the graphs are reloaded (Triton loads the new version folders and keeps the
loaded ones, as ``version_policy: all`` asks) and then the pinned ensembles. With other modes Triton refuses,
and only the versions it has loaded can be chosen.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from medsam2.engine.backend import StageBackend
from medsam2.errors import BackendUnavailable, NotFound
from medsam2.graphs import (
    GRAPHS,
    TRITON_ENSEMBLES,
    TRITON_GRAPHS,
    TRITON_TRACK_STEP_WIRING,
    pinned_ensemble_name,
    pinned_ensemble_version,
)
from medsam2.models.provenance import ModelProvenance, read_provenance

log = logging.getLogger(__name__)

READY = "READY"
ENSEMBLE_STEPS = frozenset(stage for stage, _, _ in TRITON_TRACK_STEP_WIRING)
"""The graphs the ``track_step`` ensembles run: loading an ensemble (re)loads them."""


class TritonVersions:
    """The numbered model versions of a Triton server, each run by a ``TritonBackend`` pinned to it."""

    def __init__(self, url: str, *, repository: Path | None = None, timeout_s: float = 30.0) -> None:
        try:
            import tritonclient.grpc as grpcclient
            from tritonclient.utils import InferenceServerException
        except ImportError as exc:
            raise BackendUnavailable(
                "tritonclient is not installed: pip install 'tritonclient[grpc]>=2.73,<3' 'protobuf>=6.30,<7'"
            ) from exc
        self.url = url
        self.repository = repository
        """A local view of Triton's model repository (e.g. the same volume, read-only), for provenance records."""
        self.timeout_s = timeout_s
        self._grpc = grpcclient
        self._client: Any = None
        self._server_error = InferenceServerException

    # -- the catalog --------------------------------------------------------------------------
    def available(self) -> list[int]:
        """The versions Triton can run now (every graph and pinned ensemble READY), oldest first."""
        return self._served(self._index())

    def pinned_in_repository(self) -> list[int]:
        """Versions that have pinned ensembles in Triton's repository, loaded or not."""
        return _pinned_versions(self._index())

    def choose(self, version: int | None) -> tuple[int | None, ModelProvenance | None]:
        """``version`` (None: the newest in the repository), loaded first when Triton allows; ``NotFound`` if not.

        (None, None) when the repository has no numbered versions (no pinned ensembles): Triton's one model.
        """
        index = self._index()
        if version is None and not _pinned_versions(index):
            return None, None  # a repository without numbered versions: its one model, as before
        wanted = _pinned_versions(index) if version is None else [version]
        missing = [v for v in wanted if v not in self._served(index)]
        if missing:
            self._load(missing)
            index = self._index()
        served = self._served(index)
        chosen = (served[-1] if served else None) if version is None else version
        if chosen is None or chosen not in served:
            there = ", ".join(map(str, served)) or "none"
            raise NotFound(
                f"model version {chosen if chosen is not None else '(newest)'} is not served by Triton at "
                f"{self.url}: it serves version(s) {there}"
                + (
                    "; it loads new versions only with --model-control-mode=explicit"
                    if chosen in _pinned_versions(index)
                    else ""
                ),
                field="version",
                reason="MODEL_VERSION_NOT_FOUND",
            )
        return chosen, self._provenance(chosen)

    def load(self, version: int | None) -> StageBackend:
        """A Triton backend whose every request runs ``version``."""
        from medsam2.backends.triton_backend import TritonBackend

        return TritonBackend(self.url, version=version)

    def close(self) -> None:
        """Close the index client's channel."""
        client, self._client = self._client, None
        if client is not None:
            client.close()

    # -------------------------------------------------------------------------------------------
    def _connection(self) -> Any:
        if self._client is None:
            # A channel of its own, reconnecting quickly: Triton often comes up after the service.
            self._client = self._grpc.InferenceServerClient(
                self.url,
                channel_args=[
                    ("grpc.use_local_subchannel_pool", 1),
                    ("grpc.initial_reconnect_backoff_ms", 100),
                    ("grpc.min_reconnect_backoff_ms", 100),
                    ("grpc.max_reconnect_backoff_ms", 1000),
                ],
            )
        return self._client

    def _index(self) -> list[dict[str, Any]]:
        try:
            index = self._connection().get_model_repository_index(as_json=True, client_timeout=self.timeout_s)
        except self._server_error as exc:
            self.close()  # the next call starts on a fresh channel, not one backing off from a refused connect
            raise BackendUnavailable(f"cannot read the model repository index of Triton at {self.url}: {exc}") from exc
        return list(index.get("models", []))

    def _served(self, index: list[dict[str, Any]]) -> list[int]:
        ready: dict[str, set[int]] = {}
        for entry in index:
            if entry.get("state") == READY and str(entry.get("version", "")).isdigit():
                ready.setdefault(entry["name"], set()).add(int(entry["version"]))
        graphs = [ready.get(stage.value, set()) for stage in (*GRAPHS, *TRITON_GRAPHS)]
        common = set.intersection(*graphs) if graphs else set()
        return sorted(v for v in common if all(pinned_ensemble_name(e.value, v) in ready for e in TRITON_ENSEMBLES))

    def _load(self, versions: list[int]) -> None:
        """Ask Triton to load ``versions`` (explicit model control); a refusal is logged, not raised.

        Loading a pinned ensemble reloads its steps together (Triton reads their new version folders and swaps
        the new instances in once they are loaded), so only the graphs outside every ensemble are loaded one by
        one: reloading each graph on its own would reload the ensembles on top of it once per graph.
        """
        try:
            for stage in (*GRAPHS, *TRITON_GRAPHS):
                if stage not in ENSEMBLE_STEPS:
                    self._connection().load_model(stage.value, client_timeout=self.timeout_s)
            for version in versions:
                for ensemble in TRITON_ENSEMBLES:
                    self._connection().load_model(
                        pinned_ensemble_name(ensemble.value, version), client_timeout=self.timeout_s
                    )
        except self._server_error as exc:
            log.info("Triton at %s did not load model version(s) %s: %s", self.url, versions, exc.message())

    def _provenance(self, version: int) -> ModelProvenance:
        if self.repository is not None and self.repository.is_dir():
            return read_provenance(self.repository, version)
        return ModelProvenance(version=version)


def _pinned_versions(index: list[dict[str, Any]]) -> list[int]:
    names = {entry.get("name", "") for entry in index}
    found = {
        v
        for name in names
        for ensemble in TRITON_ENSEMBLES
        if (v := pinned_ensemble_version(name, ensemble.value)) is not None
    }
    return sorted(found)
