"""The chart's PACS endpoints become the MEDSAM2_PACS_<NAME>_* settings the service reads, credentials from Secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from medsam2.pacs.config import load_config
from test_chart import CHART, NAMESPACE, RELEASE, container, env_of, helm_template, install_tools, one, run


@pytest.fixture(scope="module")
def tools() -> dict[str, Path]:
    return install_tools()


def _server_env(tools: dict[str, Path], *values: str) -> dict[str, object]:
    docs = helm_template(tools, ["--set", "triton.enabled=false", *values])
    return env_of(container(one(docs, "Deployment", f"{RELEASE}-medsam2"), "server"))


def test_pacs_endpoints_with_secret_credentials(tools: dict[str, Path]) -> None:
    env = _server_env(
        tools,
        "--set",
        "server.pacs.endpoints[0].name=hospital",
        "--set",
        "server.pacs.endpoints[0].url=https://pacs.example.org/dicom-web",
        "--set",
        "server.pacs.endpoints[0].existingSecret=hospital-pacs",
        "--set",
        "server.pacs.endpoints[0].tokenKey=token",
        "--set",
        "server.pacs.endpoints[1].name=research_orthanc",
        "--set",
        "server.pacs.endpoints[1].url=http://orthanc:8042/dicom-web",
        "--set",
        "server.pacs.endpoints[1].timeoutSeconds=5",
        "--set",
        "server.pacs.endpoints[1].existingSecret=orthanc",
        "--set",
        "server.pacs.endpoints[1].usernameKey=user",
        "--set",
        "server.pacs.endpoints[1].passwordKey=pass",
    )
    assert env["MEDSAM2_PACS_HOSPITAL_URL"] == "https://pacs.example.org/dicom-web"
    assert env["MEDSAM2_PACS_HOSPITAL_TOKEN"] == {"secretKeyRef": {"name": "hospital-pacs", "key": "token"}}
    assert env["MEDSAM2_PACS_RESEARCH_ORTHANC_PASSWORD"] == {"secretKeyRef": {"name": "orthanc", "key": "pass"}}
    assert env["MEDSAM2_PACS_RESEARCH_ORTHANC_USERNAME"] == {"secretKeyRef": {"name": "orthanc", "key": "user"}}
    # What the pod's environment would hold, with the Secrets resolved, configures the service as intended.
    plain = {k: v if isinstance(v, str) else "secret" for k, v in env.items() if k.startswith("MEDSAM2_PACS_")}
    config = load_config(None, plain)
    assert sorted(config.endpoints) == ["hospital", "research_orthanc"]
    assert config.get("research_orthanc").timeout_s == 5 and config.get("research_orthanc").username == "secret"
    assert config.get("hospital").token == "secret"


def test_no_pacs_by_default_and_bad_names_fail_the_schema(tools: dict[str, Path]) -> None:
    assert not any(k.startswith("MEDSAM2_PACS_") for k in _server_env(tools))
    done = run(
        [
            tools["helm"],
            "template",
            RELEASE,
            CHART,
            "--namespace",
            NAMESPACE,
            "--set",
            "triton.enabled=false",
            "--set",
            "server.pacs.endpoints[0].name=Bad-Name",
            "--set",
            "server.pacs.endpoints[0].url=https://pacs.example.org",
        ]
    )
    assert done.returncode != 0 and "name" in done.stderr
