"""The Grafana dashboard, the alerts and the autoscaling rules query only metrics that exist.

Service metrics are checked against a live `/metrics`: the real service runs in-process on the embedded ONNX
Runtime backend, serves one CreateSession/AddPrompt/Propagate so that its histograms and counters have samples,
and is scraped over loopback. Triton metrics are checked against the list Triton documents. Every PromQL
expression is parsed with a real PromQL parser (promql-parser, installed by scripts/chart_tools.sh into the
tools' own environment), which also catches syntax errors.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

# tests/ is on sys.path under pytest's default import mode: share the chart helpers.
from test_chart import CHART, RELEASE, by_kind, helm_template, install_tools

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = CHART / "dashboards" / "medsam2.json"
ADAPTER_RULES = CHART / "files" / "prometheus-adapter-rules.yaml"
PROBE = ROOT / "deploy" / "docker" / "medsam2_health_probe.py"

# From Triton's metrics documentation (triton-inference-server/server, docs/user_guide/metrics.md): the
# inference request counters and cumulative latencies (per model), and the GPU metrics (DCGM, per GPU).
TRITON_METRICS = {
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
    "nv_gpu_utilization",
    "nv_gpu_memory_total_bytes",
    "nv_gpu_memory_used_bytes",
    "nv_gpu_power_usage",
    "nv_gpu_power_limit",
    "nv_energy_consumption",
    "nv_cpu_utilization",
    "nv_cpu_memory_total_bytes",
    "nv_cpu_memory_used_bytes",
}
# Written by Prometheus itself for every scrape target.
PROMETHEUS_METRICS = {"up"}

# Run with the tools' Python: every expression's metric names, or its parse error.
_PROMQL_NAMES = r"""
import json, sys
import promql_parser as p
out = {}
for expr in json.load(sys.stdin):
    names = []
    def visit(node):
        if isinstance(node, p.VectorSelector) and node.name:
            names.append(node.name)
    try:
        p.walk(p.parse(expr), visit)
        out[expr] = {"names": sorted(set(names))}
    except Exception as exc:
        out[expr] = {"error": str(exc)}
json.dump(out, sys.stdout)
"""


def promql_names(tools: dict[str, Path], exprs: list[str]) -> dict[str, dict]:
    """Parse PromQL expressions; {expr: {"names": [...]} or {"error": message}}."""
    done = subprocess.run(
        [str(tools["python"]), "-c", _PROMQL_NAMES],
        input=json.dumps(exprs),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(done.stdout)


def grafana_to_promql(expr: str) -> str:
    """Grafana's interval variables are not PromQL: give them a value (label-value variables are strings)."""
    return expr.replace("$__rate_interval", "5m").replace("$__interval", "1m")


def dashboard_queries() -> dict[str, str]:
    """Every query of the dashboard: panel targets and template variables, by where they come from."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = {
        f"panel '{p['title']}' {t['refId']}": grafana_to_promql(t["expr"])
        for p in dashboard["panels"]
        for t in p.get("targets", [])
    }
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":  # label_values(<selector>, label): the selector is PromQL
            selector = re.fullmatch(r"label_values\((.+),\s*\w+\)", var["query"]["query"]).group(1)
            queries[f"variable {var['name']}"] = selector
    return queries


def alert_queries(tools: dict[str, Path]) -> dict[str, str]:
    """Every alert expression, rendered with Triton on (all alerts)."""
    docs = helm_template(tools, [])
    return {
        f"alert {r['alert']}": r["expr"]
        for g in by_kind(docs, "PrometheusRule")[0]["spec"]["groups"]
        for r in g["rules"]
    }


def adapter_queries() -> dict[str, str]:
    """The prometheus-adapter rules with their <<...>> placeholders filled in."""
    queries = {}
    for rule in yaml.safe_load(ADAPTER_RULES.read_text())["rules"]:
        series = re.match(r"\w+", rule["seriesQuery"]).group(0)
        fill = {"<<.Series>>": series, "<<.LabelMatchers>>": 'namespace="ns", pod="p"', "<<.GroupBy>>": "pod"}
        query = rule["metricsQuery"]
        for placeholder, value in fill.items():
            query = query.replace(placeholder, value)
        queries[f"adapter {rule['name']['as']} series"] = rule["seriesQuery"]
        queries[f"adapter {rule['name']['as']} query"] = query
    return queries


def unknown_metrics(tools: dict[str, Path], queries: dict[str, str], exported: set[str]) -> dict[str, list[str]]:
    """Queries that use a metric nobody exports, or that do not parse."""
    parsed = promql_names(tools, list(queries.values()))
    known = exported | TRITON_METRICS | PROMETHEUS_METRICS
    bad = {}
    for where, expr in queries.items():
        result = parsed[expr]
        if "error" in result:
            bad[where] = [f"does not parse: {result['error']}"]
        elif missing := sorted(set(result["names"]) - known):
            bad[where] = missing
    return bad


@pytest.fixture(scope="session")
def tools() -> dict[str, Path]:
    """The chart tools (scripts/chart_tools.sh, idempotent: instant once installed)."""
    return install_tools()


# --- the live service ----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def live_service(graphs: dict[str, Path]):  # yields (grpc address, metric names)
    """The real service on loopback, after one segmentation; yields its address and every exported series name."""
    from prometheus_client.parser import text_string_to_metric_families

    from medsam2.api.client import Client
    from medsam2.backends.onnxruntime_backend import OnnxRuntimeBackend
    from medsam2.server.app import start_server
    from medsam2.server.config import ServerSettings

    metrics_port = _free_port()
    settings = ServerSettings(port=0, metrics_port=metrics_port, model_repository=graphs["present"])
    running = start_server(settings, OnnxRuntimeBackend(graphs["present"]))
    try:
        client = Client(f"127.0.0.1:{running.port}")
        volume = (np.random.default_rng(0).random((2, 48, 48)) * 255).astype(np.uint8)
        session = client.create_session(volume)
        client.add_box(session.session_id, 1, 0, (10, 10, 30, 30))
        assert len(list(client.propagate(session.session_id))) >= 1
        client.close_session(session.session_id)
        client.close()
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        names = set()
        for family in text_string_to_metric_families(text):
            # Sample names (x_bucket, x_total, ...) of the series present, plus those a family's type implies,
            # so a labelled counter that has not counted yet (evictions, errors) still counts as exported.
            names |= {s.name for s in family.samples}
            names |= {
                "counter": {f"{family.name}_total"},
                "gauge": {family.name},
                "histogram": {f"{family.name}_{x}" for x in ("bucket", "sum", "count")},
            }.get(family.type, set())
        yield f"127.0.0.1:{running.port}", names
    finally:
        running.stop(1.0)


# --- tests ---------------------------------------------------------------------------------------


def test_dashboard_parses_and_shows_what_operators_need() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    assert all(p.get("targets") and all(t["expr"].strip() for t in p["targets"]) for p in panels)
    exprs = " ".join(t["expr"] for p in panels for t in p["targets"])
    for needed in (
        "medsam2_slice_duration_seconds_bucket",
        "medsam2_propagated_slices_total",
        "medsam2_active_sessions",
        "nv_inference_queue_duration_us",
        "nv_gpu_utilization",
    ):
        assert needed in exprs, needed
    assert "histogram_quantile(0.95" in exprs
    # The ConfigMap carries the file unchanged.
    assert dashboard["uid"] and dashboard["templating"]["list"][0]["type"] == "datasource"


def test_rendered_dashboard_configmap_is_the_file(tools: dict[str, Path]) -> None:
    docs = helm_template(tools, [])
    configmap = next(d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"] == f"{RELEASE}-medsam2-dashboard")
    assert json.loads(configmap["data"]["medsam2.json"]) == json.loads(DASHBOARD.read_text())


def test_every_queried_metric_exists(tools: dict[str, Path], live_service: tuple[str, set[str]]) -> None:
    _, exported = live_service
    assert {
        "medsam2_slice_duration_seconds_bucket",
        "medsam2_propagated_slices_total",
        "medsam2_active_sessions",
        "medsam2_backend_ready",
    } <= exported
    queries = {**dashboard_queries(), **alert_queries(tools), **adapter_queries()}
    assert unknown_metrics(tools, queries, exported) == {}
    alerts = " ".join(alert_queries(tools).values())
    for needed in (
        "medsam2_slice_duration_seconds_bucket",
        "medsam2_rpc_requests_total",
        "medsam2_active_sessions",
        "medsam2_session_state_bytes",
        "medsam2_backend_ready",
        "nv_inference_queue_duration_us",
    ):
        assert needed in alerts, needed


def test_a_misspelt_or_broken_query_is_caught(tools: dict[str, Path], live_service: tuple[str, set[str]]) -> None:
    _, exported = live_service
    queries = {
        "misspelt": "sum(rate(medsam2_propagated_slice_total[5m]))",
        "broken": "sum(rate(medsam2_propagated_slices_total[5m])",
        "fine": "sum(rate(medsam2_propagated_slices_total[5m]))",
    }
    bad = unknown_metrics(tools, queries, exported)
    assert bad["misspelt"] == ["medsam2_propagated_slice_total"]
    assert bad["broken"][0].startswith("does not parse")
    assert "fine" not in bad


def test_image_health_probe(live_service: tuple[str, set[str]]) -> None:
    """The probe the service image runs (HEALTHCHECK, and readiness under TLS) reads the real health service."""
    address, _ = live_service
    ok = subprocess.run(
        [sys.executable, str(PROBE), "--address", address], check=False, capture_output=True, text=True, timeout=30
    )
    assert ok.returncode == 0 and ok.stdout.strip() == "SERVING", ok.stdout + ok.stderr
    down = subprocess.run(
        [sys.executable, str(PROBE), "--address", f"127.0.0.1:{_free_port()}", "--timeout", "1"],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert down.returncode == 1 and "health check failed" in down.stderr
