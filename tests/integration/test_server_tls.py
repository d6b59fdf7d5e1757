"""TLS and mutual TLS on the session service, with certificates made by openssl for the test."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from medsam2.api.pb.medsam2.v1 import segmentation_pb2 as pb
from medsam2.api.pb.medsam2.v1 import segmentation_pb2_grpc as pb_grpc
from medsam2.backends.onnxruntime_backend import OnnxRuntimeBackend
from medsam2.server.app import start_server
from medsam2.server.config import ServerSettings
from pki import make_certificates, needs_openssl

pytestmark = needs_openssl


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_certificates(tmp_path_factory.mktemp("pki"), clients=["client"])


def _serve(graphs, pki: Path, mutual: bool):
    settings = ServerSettings(
        port=0,
        metrics_port=0,
        model_repository=graphs["present"],
        tls_cert=pki / "server.pem",
        tls_key=pki / "server.key",
        tls_client_ca=pki / "ca.pem" if mutual else Path(""),
    )
    return start_server(settings, OnnxRuntimeBackend(graphs["present"], threads=1))


def _list(target: str, creds: grpc.ChannelCredentials) -> int:
    with grpc.secure_channel(target, creds, options=[("grpc.ssl_target_name_override", "localhost")]) as channel:
        stub = pb_grpc.SegmentationServiceStub(channel)
        return len(stub.ListSessions(pb.ListSessionsRequest(), timeout=10).sessions)


def test_tls(graphs, pki: Path) -> None:
    running = _serve(graphs, pki, mutual=False)
    try:
        target = f"localhost:{running.port}"
        assert _list(target, grpc.ssl_channel_credentials((pki / "ca.pem").read_bytes())) == 0
        with pytest.raises(grpc.RpcError) as info, grpc.insecure_channel(target) as plain:
            pb_grpc.SegmentationServiceStub(plain).ListSessions(pb.ListSessionsRequest(), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        running.stop(1)


def test_mutual_tls_requires_a_client_certificate(graphs, pki: Path) -> None:
    running = _serve(graphs, pki, mutual=True)
    try:
        target = f"localhost:{running.port}"
        ca = (pki / "ca.pem").read_bytes()
        with_cert = grpc.ssl_channel_credentials(
            ca, (pki / "client.key").read_bytes(), (pki / "client.pem").read_bytes()
        )
        assert _list(target, with_cert) == 0
        with pytest.raises(grpc.RpcError) as info:
            _list(target, grpc.ssl_channel_credentials(ca))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        running.stop(1)
