"""``--health-port -1`` (and MEDSAM2_HEALTH_PORT=-1) turns the separate health port off, as its help says."""

from __future__ import annotations

import argparse

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from medsam2.errors import ConfigError
from medsam2.server.app import start_server
from medsam2.server.config import ServerSettings
from medsam2.settings import add_arguments, resolve
from medsam2.testing.fake_backend import FakeBackend


def _settings(argv: list[str], environ: dict[str, str]) -> ServerSettings:
    parser = argparse.ArgumentParser()
    add_arguments(parser, ServerSettings, "server settings")
    return resolve(ServerSettings, parser.parse_args(argv), environ)


@pytest.mark.parametrize(("argv", "environ"), [(["--health-port", "-1"], {}), ([], {"MEDSAM2_HEALTH_PORT": "-1"})])
def test_minus_one_turns_the_health_port_off(argv: list[str], environ: dict[str, str]) -> None:
    settings = _settings(["--host", "127.0.0.1", "--port", "0", "--metrics-port", "0", *argv], environ)
    assert settings.health_port == -1
    running = start_server(settings, FakeBackend(), metrics_server=False)
    try:
        assert running.ops_server is None and running.ops_port == 0
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:  # health still answers on the gRPC port
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        running.stop(0)


def test_the_default_health_port_is_on() -> None:
    running = start_server(
        _settings(["--host", "127.0.0.1", "--port", "0", "--metrics-port", "0"], {}),
        FakeBackend(),
        metrics_server=False,
    )
    try:
        assert running.ops_server is not None and running.ops_port > 0
    finally:
        running.stop(0)


@pytest.mark.parametrize(("argv", "environ"), [(["--health-port", "-2"], {}), ([], {"MEDSAM2_HEALTH_PORT": "-7"})])
def test_below_minus_one_is_refused(argv: list[str], environ: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match=r"health_port \(MEDSAM2_HEALTH_PORT\) must be >= -1, got -[27]"):
        _settings(argv, environ)


def test_other_ports_still_refuse_negatives() -> None:
    with pytest.raises(ConfigError, match=r"setting port \(MEDSAM2_PORT\) must be >= 0, got -1"):
        _settings(["--port", "-1"], {})
