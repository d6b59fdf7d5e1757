"""The images, built by scripts/build_images.sh (buildah) and run with podman as the chart runs them.

One service container serves the whole module: the image's own user, a read-only root, all capabilities dropped,
the model repository mounted read-only, ports published on loopback only. It must report SERVING, pass its own
HEALTHCHECK command, segment through ``medsam2 client`` exactly as the host's ``medsam2 segment`` does, answer
metrics, serve the web page, and exit 0 within the grace period when SIGTERM arrives with a stream in flight
(the last test). The CPU build image then runs the chart's build Job script, rendered by helm, and must write
the same ONNX files as the host's export.

Skipped, with the reason, only where buildah, podman or runc are missing (scripts/test_deps.sh installs them
as root). `make test` builds the images before pytest starts (warm: seconds); run alone, the module builds them.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import nibabel as nib
import numpy as np
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from medsam2.api.client import Client
from medsam2.cli.main import main
from serve_process import free_port
from test_chart import CHART, NAMESPACE, RELEASE, VARIANTS, container, env_of, install_tools

ROOT = Path(__file__).resolve().parents[2]
BUILD_TIMEOUT_S = 3600
"""A cold build (stand-in base, every apt, pip and npm download) took 15 minutes here at a load of 22 on 2 cores;
a warm one seconds. `make test` starts that build in the background before pytest, and this one waits for its
lock, then reuses it; run alone, the hour leaves room for a slower machine (the module's pytest-timeout is
raised above it)."""
START_TIMEOUT_S = 300
"""SERVING came after about 30 s under load here (loading six graphs); five-fold slower still fits."""
GRACE_S = 20
"""MEDSAM2_GRACE_S of the test's container: the drain with a stream in flight takes at most this."""
EXIT_MARGIN_S = 15
"""The chart's exitMarginSeconds: what the pod may take after the drain to close everything and exit."""
SLICES, SIDE = 16, 64
pytestmark = pytest.mark.timeout(BUILD_TIMEOUT_S + 1200)


def _podman_run_args() -> list[str]:
    """runc (crun refuses hybrid cgroups) and rlimits runc accepts (podman's defaults, and the host's nproc, fail)."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[1] % (1 << 62), 16384)
    return ["--runtime", "runc", "--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={nproc}:{nproc}"]


HARDENED = ["--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run podman; with ``check``, fail the test with its output."""
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert done.returncode == 0, f"podman {' '.join(args[:3])}: {done.stdout[-2000:]}{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def images() -> dict[str, str]:
    """The service and CPU build images of this tree (scripts/build_images.sh: cached by content)."""
    missing = [tool for tool in ("buildah", "podman", "runc") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"this machine cannot run containers: {', '.join(missing)} not installed (scripts/test_deps.sh)")
    started = time.monotonic()
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build_images.sh")], capture_output=True, text=True, timeout=BUILD_TIMEOUT_S
    )
    assert done.returncode == 0, done.stderr[-5000:]
    print(f"\nbuild_images.sh ({time.monotonic() - started:.0f} s):\n{done.stderr}")
    found = dict(line.split("=", 1) for line in done.stdout.split() if "=" in line)
    assert set(found) == {"MEDSAM2_SERVICE_IMAGE", "MEDSAM2_BUILD_IMAGE"}, done.stdout
    return found


class Service:
    """The running service container and its loopback ports."""

    def __init__(self, name: str, ports: dict[str, int]) -> None:
        self.name, self.ports = name, ports
        self.target = f"127.0.0.1:{ports['grpc']}"

    def url(self, port: str, path: str) -> str:
        """A URL on one of the published HTTP ports."""
        return f"http://127.0.0.1:{self.ports[port]}{path}"

    def logs(self) -> str:
        """What the container wrote so far."""
        done = podman("logs", self.name, check=False)
        return (done.stdout + done.stderr)[-4000:]


def _health(target: str) -> int:
    with grpc.insecure_channel(target) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status


@pytest.fixture(scope="module")
def service(images: dict[str, str], graphs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """One container of the service image, serving the test graphs read-only, until the module ends."""
    # A copy readable by the image's user (pytest's folders are 0700).
    models = tmp_path_factory.mktemp("models") / "repository"
    shutil.copytree(graphs["present"], models)
    for path in [models, *models.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    name = f"medsam2-test-{os.getpid()}"
    ports = {"grpc": free_port(), "health": free_port(), "metrics": free_port(), "http": free_port()}
    podman("rm", "-f", name, check=False)
    podman(
        "run", "-d", "--name", name, *_podman_run_args(), *HARDENED, "--tmpfs", "/tmp:rw,size=256m,mode=1777",
        "-v", f"{models}:/models:ro", "-e", "MEDSAM2_MODEL_REPOSITORY=/models", "-e", "MEDSAM2_THREADS=2",
        "-e", f"MEDSAM2_GRACE_S={GRACE_S}", "-e", "MEDSAM2_HTTP_PORT=8080",
        "-p", f"127.0.0.1:{ports['grpc']}:50051", "-p", f"127.0.0.1:{ports['health']}:50052",
        "-p", f"127.0.0.1:{ports['metrics']}:9464", "-p", f"127.0.0.1:{ports['http']}:8080",
        images["MEDSAM2_SERVICE_IMAGE"],
    )  # fmt: skip
    running = Service(name, ports)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        status = None
        while status != health_pb2.HealthCheckResponse.SERVING:
            state = podman("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
            assert state == "running", f"the container is {state}: {running.logs()}"
            assert time.monotonic() < deadline, f"not SERVING after {START_TIMEOUT_S} s: {running.logs()}"
            try:
                status = _health(running.target)
            except grpc.RpcError:
                time.sleep(1)
        yield running
    finally:
        podman("rm", "-f", "--time", "0", name, check=False)


def test_runs_as_the_images_user_on_a_read_only_root(service: Service, images: dict[str, str]) -> None:
    user = podman("image", "inspect", "--format", "{{.Config.User}}", images["MEDSAM2_SERVICE_IMAGE"]).stdout.strip()
    assert user == "10001:10001"
    status = podman("exec", service.name, "cat", "/proc/1/status").stdout
    assert [line.split()[1] for line in status.splitlines() if line.startswith(("Uid:", "Gid:"))] == ["10001"] * 2
    for path in ("/usr/local/lib/probe", "/models/probe"):
        done = podman("exec", service.name, "touch", path, check=False)
        assert done.returncode != 0 and "Read-only file system" in done.stderr, (path, done.stderr)


def test_health_serving_and_the_images_healthcheck_passes(service: Service, images: dict[str, str]) -> None:
    assert _health(f"127.0.0.1:{service.ports['health']}") == health_pb2.HealthCheckResponse.SERVING
    config = json.loads(
        podman("image", "inspect", "--format", "{{json .Config.Healthcheck}}", images["MEDSAM2_SERVICE_IMAGE"]).stdout
    )
    test = config["Test"]
    assert test[0] == "CMD" and test[1] == "medsam2-health-probe", config
    done = podman("exec", service.name, *test[1:], check=False)
    assert done.returncode == 0 and done.stdout.strip() == "SERVING", done.stdout + done.stderr
    # podman's own run of the image's HEALTHCHECK (no systemd here to schedule it): 0 is healthy.
    done = podman("healthcheck", "run", service.name, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def _ct(folder: Path) -> Path:
    """A small CT as NIfTI: body and a brighter lesion (as in test_client_cli.py)."""
    rng = np.random.default_rng(3)
    x, y, z = np.meshgrid(np.arange(40), np.arange(44), np.arange(5), indexing="ij")
    hu = np.full(x.shape, -120, np.int16)
    hu[(x - 20) ** 2 / 300 + (y - 22) ** 2 / 380 < 1] = 30
    hu[(x - 21) ** 2 + (y - 19) ** 2 + 4 * (z - 2) ** 2 < 40] = 150
    hu = hu + rng.integers(-25, 25, hu.shape).astype(np.int16)
    affine = np.array([[-0.8, 0, 0, 100.0], [0, -0.8, 0, 50.0], [0, 0, 2.5, -30.0], [0, 0, 0, 1]])
    path = folder / "ct.nii.gz"
    nib.save(nib.Nifti1Image(hu, affine), str(path))
    return path


def test_client_through_the_container_equals_the_hosts_masks(
    service: Service, graphs: dict[str, Path], tmp_path: Path
) -> None:
    ct = _ct(tmp_path)
    actions = tmp_path / "actions.json"
    actions.write_text(
        json.dumps([{"op": "box", "object": 1, "slice": 4, "box": [12, 10, 30, 28]}, {"op": "propagate"}])
    )
    common = ["--actions", str(actions), "--preset", "auto", "--modality", "CT", "--no-progress"]
    assert main(["client", str(ct), "--server", service.target, "--out", str(tmp_path / "client.nii.gz"), *common]) == 0
    graphs_flag = ["--graphs", str(graphs["present"])]
    assert main(["segment", str(ct), *graphs_flag, "--out", str(tmp_path / "host.nii.gz"), *common]) == 0
    served = np.asarray(nib.load(tmp_path / "client.nii.gz").dataobj)
    host = np.asarray(nib.load(tmp_path / "host.nii.gz").dataobj)
    assert served.shape == host.shape == (40, 44, 5)
    assert served.any() and np.array_equal(served, host)


def test_metrics_answer(service: Service) -> None:
    with urllib.request.urlopen(service.url("metrics", "/metrics"), timeout=30) as reply:
        body = reply.read().decode()
    assert reply.status == 200
    assert 'medsam2_backend_ready{backend="onnxruntime"} 1.0' in body
    assert "medsam2_rpc_requests_total{" in body


def test_the_web_page_is_served_from_the_image(service: Service) -> None:
    with urllib.request.urlopen(service.url("http", "/"), timeout=30) as reply:
        page = reply.read().decode()
    assert reply.status == 200 and reply.headers.get_content_type() == "text/html"
    assert "app.js" in page
    with urllib.request.urlopen(service.url("http", "/static/app.js"), timeout=30) as reply:
        bundle = reply.read()
    assert reply.status == 200 and len(bundle) > 10_000  # the bundled viewer (NiiVue inside), not a stub


def test_sigterm_with_a_stream_in_flight_exits_0_within_the_grace(service: Service) -> None:
    """The last test of the module: it stops the container."""
    rng = np.random.default_rng(5)
    frames = rng.integers(0, 60, (SLICES, SIDE, SIDE), dtype=np.uint8)
    frames[:, 20:44, 18:40] += 120
    client = Client(service.target)
    sid = client.create_session(frames, preset="none").session_id
    client.add_box(sid, 1, 0, (18, 20, 40, 44))
    arrivals = [time.monotonic()]
    stream = client.propagate(sid)
    first = next(stream)
    arrivals.append(time.monotonic())
    assert first.total == SLICES
    took: list[float] = []

    def stop() -> None:  # podman stop: SIGTERM, then SIGKILL only long after the grace
        started = time.monotonic()
        podman("stop", "--time", str(GRACE_S + EXIT_MARGIN_S + 60), service.name, timeout=300)
        took.append(time.monotonic() - started)

    stopper = threading.Thread(target=stop)
    stopper.start()
    received, ended = 1, None
    try:
        for _ in stream:
            received += 1
            arrivals.append(time.monotonic())
    except grpc.RpcError as exc:  # cut at the end of the drain: a reason clients retry on
        ended = exc.code()
    stopper.join(300)
    client.close()
    exit_code = podman("inspect", "--format", "{{.State.ExitCode}}", service.name).stdout.strip()
    log = service.logs()
    assert exit_code == "0", log
    assert "draining for up to" in log
    # After the drain the server still finishes the slice in flight (a backend call is never cut), so on a loaded
    # machine the exit may take up to a slice's compute beyond the margin (here, at a load of 20 on 2 cores, a
    # slice took up to 16 s): the bound grows with the slowest slice this machine streamed, measured now.
    slice_s = max(b - a for a, b in zip(arrivals, arrivals[1:], strict=False))
    assert took and took[0] <= GRACE_S + EXIT_MARGIN_S + 2 * slice_s, (took, slice_s, log)
    assert received == SLICES or ended in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED), (received, ended)
    print(f"\nSIGTERM with a stream in flight: exited 0 after {took[0]:.1f} s, {received}/{SLICES} slices streamed,")
    print(f"the slowest slice took {slice_s:.1f} s")


def test_the_gpu_build_image_stops_at_nvidias_index_naming_the_argument(images: dict[str, str]) -> None:
    """With TensorRT and an index that cannot be reached, the build fails at that step and says what to set.

    A closed loopback port stands for an unreachable index (deterministic, and never downloads TensorRT on a
    machine that could); the layers before it are the CPU image's, from the cache.
    """
    index = f"http://127.0.0.1:{free_port()}/"
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build_images.sh"), "--gpu"],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        env={**os.environ, "TENSORRT_INDEX_URL": index},
    )
    assert done.returncode != 0, done.stderr[-3000:]
    assert f"TENSORRT_INDEX_URL={index} cannot be reached from this build" in done.stderr, done.stderr[-3000:]
    assert "--build-arg TENSORRT_INDEX_URL=" in done.stderr and "WITH_TENSORRT=0" in done.stderr
    # It failed at that step (torch, sam2 and the export dependencies went in before it), and nowhere else.
    assert 'building at STEP "RUN --mount=type=cache,target=/root/.cache/pip if [ "${WITH_TENSORRT}" = 1 ]' in (
        done.stderr
    ), done.stderr[-3000:]
    assert done.stderr.count("building at STEP") == 1


def test_the_cpu_build_image_exports_as_the_chart_job_does(
    images: dict[str, str], checkpoints: dict[str, Path], graphs: dict[str, Path], tmp_path: Path
) -> None:
    ckpt = checkpoints["present"]
    job_values = ["--set", f"modelRepository.buildJob.checkpointFile=/models/.checkpoints/{ckpt.name}"]
    rendered = subprocess.run(
        [str(install_tools()["helm"]), "template", RELEASE, str(CHART), "--namespace", NAMESPACE]
        + VARIANTS["cpu"]
        + job_values,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert rendered.returncode == 0, rendered.stderr
    docs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    job = next(d for d in docs if d["kind"] == "Job")
    build = container(job, "build")
    pod = job["spec"]["template"]["spec"]
    user = f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}"
    assert build["securityContext"]["readOnlyRootFilesystem"] is True
    models = tmp_path / "models"
    (models / ".checkpoints").mkdir(parents=True)
    shutil.copy(ckpt, models / ".checkpoints" / ckpt.name)
    for path in [models, *models.rglob("*")]:
        os.chown(path, 10001, 10001)  # the Job's fsGroup owns the volume
    env = [f"--env={k}={v}" for k, v in env_of(build).items()]
    started = time.monotonic()
    done = podman(
        "run", "--rm", "--network", "none", *_podman_run_args(), *HARDENED, "--user", user,
        "--tmpfs", "/tmp:rw,size=4g,mode=1777", "-v", f"{models}:/models", *env,
        "--entrypoint", build["command"][0], images["MEDSAM2_BUILD_IMAGE"], *build["command"][1:], *build["args"],
        timeout=1800,
    )  # fmt: skip
    print(f"\nthe build Job's script in the CPU build image: {time.monotonic() - started:.0f} s")
    dest = models / "medsam2-latest-v1"
    assert "is ready (onnxruntime)" in done.stdout and (dest / ".medsam2-ready").is_file(), done.stdout
    host = sorted(graphs["present"].glob("*.onnx"))
    assert len(host) >= 6
    for graph in host:
        exported = dest / graph.stem / "1" / "model.onnx"
        assert exported.read_bytes() == graph.read_bytes(), f"{exported} differs from the host's {graph.name}"
