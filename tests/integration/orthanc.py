"""A real Orthanc PACS (with its DICOMweb plug-in) for tests, only ever inside a private network namespace.

Orthanc 1.10 binds 0.0.0.0 and has no option to bind loopback only, so it must
never start in the host's network namespace.  ``run_isolated`` re-executes this
file under ``unshare -n`` (with ``ip link set lo up``); there ``main`` starts
Orthanc on loopback, calls one scenario function with the running server,
prints the function's JSON result, and stops Orthanc.  ``OrthancServer``
refuses to start anywhere but a namespace whose only interface is ``lo``.

Install: ``apt-get install -y --no-install-recommends orthanc orthanc-dicomweb``
(``scripts/test_deps.sh`` does it).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import patience

ORTHANC = "Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
RESULT_MARKER = "ORTHANC-SCENARIO-RESULT "
HTTP_PORT = 8042
START_TIMEOUT_S = patience.SERVER_START_S


def unavailable_reason() -> str | None:
    """Why Orthanc tests cannot run here (for ``pytest.skip``), or None when they can."""
    if shutil.which(ORTHANC) is None:
        return "Orthanc is not installed (scripts/test_deps.sh installs orthanc and orthanc-dicomweb)"
    if not DICOMWEB_PLUGIN.is_file():
        return f"the Orthanc DICOMweb plug-in {DICOMWEB_PLUGIN} is missing (apt-get install orthanc-dicomweb)"
    for tool in ("unshare", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed; Orthanc may only run in a private network namespace"
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return f"cannot create a private network namespace (unshare -n): {probe.stderr.strip()}"
    return None


def run_isolated(scenario: Callable[..., dict[str, Any]], timeout_s: float, **kwargs: Any) -> dict[str, Any]:
    """Run ``scenario(server, **kwargs)`` in a fresh network namespace with a fresh Orthanc; return its result."""
    module = Path(sys.modules[scenario.__module__].__file__ or "").resolve()
    command = [
        "unshare",
        "-n",
        "sh",
        "-c",
        'ip link set lo up && exec "$0" "$@"',
        sys.executable,
        str(Path(__file__).resolve()),
        f"{module}:{scenario.__name__}",
        json.dumps(kwargs),
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        # unshare's child (and so Orthanc) dies with the namespace's processes when the group is killed.
        raise AssertionError(f"Orthanc scenario {scenario.__name__} ran past {timeout_s} s:\n{exc.stderr}") from exc
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            if done.returncode != 0:
                break
            return json.loads(line[len(RESULT_MARKER) :])
    raise AssertionError(
        f"Orthanc scenario {scenario.__name__} failed (exit {done.returncode}):\n"
        f"stdout:\n{done.stdout[-4000:]}\nstderr:\n{done.stderr[-8000:]}"
    )


def assert_private_namespace() -> None:
    """Refuse unless this process's network namespace has no interface but loopback."""
    lines = Path("/proc/self/net/dev").read_text().splitlines()[2:]
    interfaces = sorted(line.split(":", 1)[0].strip() for line in lines)
    if interfaces != ["lo"]:
        raise RuntimeError(
            f"refusing to start Orthanc: this network namespace has interfaces {interfaces}; Orthanc binds "
            "0.0.0.0, so it runs only under `unshare -n` (see tests/integration/orthanc.py run_isolated)"
        )


class OrthancServer:
    """Orthanc with DICOMweb on 127.0.0.1, storing into a temporary folder; stopped on exit."""

    def __init__(self, workdir: Path, users: dict[str, str] | None = None) -> None:
        self.workdir = Path(workdir)
        self.users = users
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{HTTP_PORT}"
        self.dicomweb_url = f"{self.url}/dicom-web"

    def __enter__(self) -> OrthancServer:
        assert_private_namespace()
        storage = self.workdir / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        config: dict[str, Any] = {
            "Name": "medsam2-test",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "HttpPort": HTTP_PORT,
            "DicomServerEnabled": False,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": bool(self.users),
            "RegisteredUsers": self.users or {},
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
            "SaveJobs": False,
            "StorageCompression": False,
        }
        config_path = self.workdir / "orthanc.json"
        config_path.write_text(json.dumps(config, indent=2))
        log = (self.workdir / "orthanc.log").open("wb")
        self.process = subprocess.Popen(
            [ORTHANC, str(config_path)], stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
        )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/system", timeout=1) as answer:
                    if answer.status == 200:
                        return
            except urllib.error.HTTPError as exc:
                if exc.code == 401:  # up, and asking for the credentials it was given
                    return
            except OSError:
                pass
            time.sleep(0.05)
        self.__exit__(None, None, None)
        raise RuntimeError(f"Orthanc did not answer within {START_TIMEOUT_S} s: {self.log_tail()}")

    def log_tail(self) -> str:
        """The end of Orthanc's log, for failure messages."""
        path = self.workdir / "orthanc.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def __exit__(self, *exc: object) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        self.process = None


def _die_with_parent() -> None:
    # If the scenario's Python is killed (e.g. a test timeout), Orthanc gets SIGTERM instead of living on.
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _load(reference: str) -> Callable[..., dict[str, Any]]:
    path, _, name = reference.rpartition(":")
    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return getattr(module, name)


def main(argv: list[str]) -> int:
    """Inside the namespace: start Orthanc, run one scenario, print its result, stop Orthanc."""
    scenario = _load(argv[0])
    kwargs = json.loads(argv[1]) if len(argv) > 1 else {}
    with tempfile.TemporaryDirectory(prefix="orthanc-") as workdir:
        users = kwargs.pop("orthanc_users", None)
        with OrthancServer(Path(workdir), users=users) as server:
            result = scenario(server, **kwargs)
    print(RESULT_MARKER + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
