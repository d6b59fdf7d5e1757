"""A backend per model version: new sessions get the current version, open sessions keep theirs.

A model repository holds numbered versions (``<graph>/<N>/model.onnx``), read in-process from a local
folder (``FolderVersions``) or served by Triton (``triton_versions.TritonVersions``). At start the
newest is loaded, or the one ``--model-version`` pins; ``switch`` (on SIGHUP, or the admin RPC
``SetModelVersion``) loads the newest again, or a given version, and makes it current; every switch after the
start goes to the audit log. A session pins the version that was current when it opened and keeps it until it
is closed or evicted; a version that is no longer current is closed when its last session goes. Each
version's backend is wrapped in its own ``InstrumentedBackend`` (metrics, and the concurrency bound).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from medsam2.engine.backend import StageBackend
from medsam2.errors import BackendUnavailable, NotFound
from medsam2.graphs import Stage
from medsam2.models.provenance import ModelProvenance, list_versions
from medsam2.models.versions import choose_version
from medsam2.server import audit, limiter

log = logging.getLogger(__name__)

BackendLoader = Callable[[Path, int | None], StageBackend]


def embedded_loader(backend: str, precision: str, threads: int) -> BackendLoader:
    """Load one version of a repository into the chosen in-process backend (``--backend``, ``--precision``)."""

    def load(repository: Path, version: int | None) -> StageBackend:
        from medsam2.backends.select import make_embedded_backend

        return make_embedded_backend(repository, backend=backend, precision=precision, threads=threads, version=version)

    return load


class VersionCatalog(Protocol):
    """Where model versions come from: which exist, and a backend for one of them."""

    def choose(self, version: int | None) -> tuple[int | None, ModelProvenance | None]:
        """``version`` (None: the newest) and its provenance; ``NotFound`` naming the versions there if absent."""
        ...

    def available(self) -> list[int]:
        """The numbered versions that can be chosen now, oldest first."""
        ...

    def load(self, version: int | None) -> StageBackend:
        """A backend that runs ``version``."""
        ...

    def close(self) -> None:
        """Let go of whatever the catalog holds open."""
        ...


@dataclass(frozen=True, slots=True)
class FolderVersions:
    """The numbered versions of a local model repository, each loaded in-process by ``loader``."""

    repository: Path
    loader: BackendLoader

    def choose(self, version: int | None) -> tuple[int | None, ModelProvenance | None]:
        """``version`` (None: the newest folder) and its provenance record."""
        return choose_version(self.repository, version)

    def available(self) -> list[int]:
        """The version folders with graphs, oldest first."""
        return list_versions(self.repository)

    def load(self, version: int | None) -> StageBackend:
        """The graphs of ``version`` in the chosen in-process runtime."""
        return self.loader(self.repository, version)

    def close(self) -> None:
        """Nothing to close: the folder is read on demand."""


class VersionedBackends:
    """Backends by model version, with the current one for new sessions; itself a backend (the current one)."""

    def __init__(
        self,
        catalog: VersionCatalog,
        *,
        max_concurrent: int = 1,
        version: int | None = None,
        wait_for_catalog: bool = False,
    ) -> None:
        """Start on ``version`` (None: the newest). With ``wait_for_catalog`` an unreachable catalog (Triton not
        up yet) does not fail the start: the newest model serves unversioned, readiness stays false, and the
        start version is chosen as soon as the catalog answers (``is_ready``)."""
        self.catalog = catalog
        self._max_concurrent = max_concurrent
        self._lock = threading.Lock()
        self._switching = threading.Lock()
        """Held for a whole switch: two switches at once must not both load a version."""
        self._backends: dict[int | None, limiter.InstrumentedBackend] = {}
        self._provenance: dict[int | None, ModelProvenance | None] = {}
        self._sessions: dict[int | None, int] = {}
        self.current_version: int | None = None
        self._start_version: list[int | None] = []
        """The start version still to be chosen (empty once chosen)."""
        self._last_start_error = ""
        try:
            self.switch(version)
        except BackendUnavailable as exc:
            if not wait_for_catalog:
                raise
            log.warning("%s: the model version is chosen once it answers", exc)
            self._start_version.append(version)
            self._backends[None] = limiter.InstrumentedBackend(catalog.load(None), max_concurrent=max_concurrent)
        self.name = self._backends[self.current_version].name

    # -- versions ---------------------------------------------------------------------------
    def switch(self, version: int | None = None, *, by: str = "") -> int | None:
        """Make ``version`` (default: the newest in the repository) current; load it first if needed.

        ``by`` names who asked (a principal, or ``SIGHUP``) for the audit log; a switch without it (the start)
        is only logged. An unknown version raises ``NotFound`` naming the versions present, and changes nothing.
        """
        with self._switching:
            chosen, previous = self._load(version, make_current=True)
        log.info("model version %s is current (was %s)", chosen, previous)
        if by:
            audit.model_version(principal=by, version=chosen, previous=previous)
        return chosen

    def available(self) -> list[int]:
        """The numbered versions that can be switched to now, oldest first ([] while the catalog is unreachable)."""
        try:
            return self.catalog.available()
        except BackendUnavailable:
            return []

    def _choose_start_version(self) -> bool:
        """Choose the start version deferred by ``wait_for_catalog``; whether it is chosen now."""
        (version,) = self._start_version
        try:
            self.switch(version)
        except (BackendUnavailable, NotFound) as exc:
            if str(exc) != self._last_start_error:  # say it once, not on every readiness check
                log.error("cannot choose the model version to serve yet: %s", exc)
                self._last_start_error = str(exc)
            return False
        self._start_version.clear()
        return True

    def hold(self, version: int) -> None:
        """Load ``version`` if needed (without making it current) and hold it until ``release``.

        For a session rebuilt from the session store: it must run the version it was opened with, whatever is
        current on this replica. ``NotFound`` when that version is no longer in the repository.
        """
        with self._switching:
            self._load(version, hold=True)

    def pin(self, version: int | None = None) -> tuple[int | None, StageBackend]:
        """The current version (or a held ``version``) and its backend, held for one session until ``release``."""
        with self._lock:
            if version is None or version not in self._backends:
                version = self.current_version
            self._sessions[version] = self._sessions.get(version, 0) + 1
            return version, self._backends[version]

    def _load(
        self, version: int | None, *, hold: bool = False, make_current: bool = False
    ) -> tuple[int | None, int | None]:
        """Load ``version`` (None: the newest) unless loaded, then hold it for a session and/or make it current,
        in the same critical section (so it cannot be unloaded in between); the version and the previous current.

        Called under ``_switching``; the load itself runs outside the registry lock (it takes seconds).
        """
        chosen, provenance = self.catalog.choose(version)
        backend: limiter.InstrumentedBackend | None = None
        while True:
            with self._lock:
                if chosen not in self._backends and backend is not None:
                    self._backends[chosen] = backend
                    self._provenance[chosen] = provenance
                if chosen in self._backends:
                    previous = self.current_version
                    if hold:
                        self._sessions[chosen] = self._sessions.get(chosen, 0) + 1
                    if make_current:
                        self.current_version = chosen
                        self._close_unused(previous)
                    return chosen, previous
            # A loaded version whose last session closed meanwhile is loaded again on the next turn.
            backend = limiter.InstrumentedBackend(self.catalog.load(chosen), max_concurrent=self._max_concurrent)

    def release(self, version: int | None) -> None:
        """A session on ``version`` has closed."""
        with self._lock:
            self._sessions[version] = max(0, self._sessions.get(version, 0) - 1)
            self._close_unused(version)

    def provenance(self, version: int | None) -> ModelProvenance | None:
        """What is known of a loaded version's making (None for a flat folder of graphs)."""
        return self._provenance.get(version)

    def loaded(self) -> dict[int | None, int]:
        """Loaded versions and how many sessions hold each."""
        with self._lock:
            return {v: self._sessions.get(v, 0) for v in self._backends}

    def _close_unused(self, version: int | None) -> None:
        if version == self.current_version or self._sessions.get(version, 0) > 0 or version not in self._backends:
            return
        self._backends.pop(version).close()
        self._provenance.pop(version, None)
        log.info("model version %s unloaded: no session uses it", version)

    # -- the StageBackend of the current version -------------------------------------------------
    @property
    def precision(self) -> str:
        """The current version's compute precision."""
        return self._backends[self.current_version].precision

    @property
    def fused_track_step(self) -> bool:
        """Whether the current backend runs whole track steps (the embedded one does not)."""
        return self._backends[self.current_version].fused_track_step

    def run(self, stage: Stage, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one stage on the current version (sessions run on the version they pinned)."""
        return self._backends[self.current_version].run(stage, inputs)

    def is_ready(self) -> bool:
        """The current version's readiness (false until a deferred start version is chosen)."""
        if self._start_version and not self._choose_start_version():
            return False
        return self._backends[self.current_version].is_ready()

    def close(self) -> None:
        """Close every loaded version."""
        with self._lock:
            for backend in self._backends.values():
                backend.close()
            self._backends.clear()
        self.catalog.close()
