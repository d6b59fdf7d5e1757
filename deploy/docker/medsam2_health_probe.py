#!/usr/bin/env python3
"""gRPC health probe of the session service: exit 0 when grpc.health.v1 reports SERVING, 1 otherwise.

Installed in the service image as ``medsam2-health-probe`` for the Docker HEALTHCHECK and, with TLS on, for the
Kubernetes readiness probe (kubelet's own gRPC probes cannot speak TLS). It reads the same environment as
``medsam2 serve``: MEDSAM2_PORT, MEDSAM2_TLS_CERT, MEDSAM2_TLS_KEY, MEDSAM2_TLS_CLIENT_CA; and
MEDSAM2_PROBE_CA (the CA that signed the server certificate; default: the certificate itself) and
MEDSAM2_PROBE_SERVER_NAME (a name in the certificate; default: localhost). With mTLS the probe presents the
server's own certificate and key as its client identity.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _set(value: str | None) -> bool:
    return bool(value) and value != "."


def main(argv: list[str] | None = None) -> int:
    """Check once; print the status; 0 if SERVING."""
    parser = argparse.ArgumentParser(prog="medsam2-health-probe", description=__doc__.splitlines()[0])
    parser.add_argument("--address", default=f"127.0.0.1:{os.environ.get('MEDSAM2_PORT', '50051')}")
    parser.add_argument("--service", default="", help="health service name ('' is the whole server)")
    parser.add_argument("--timeout", type=float, default=4.0, help="seconds")
    args = parser.parse_args(argv)

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    cert, key, client_ca = (
        os.environ.get(n, "") for n in ("MEDSAM2_TLS_CERT", "MEDSAM2_TLS_KEY", "MEDSAM2_TLS_CLIENT_CA")
    )
    if _set(cert):
        ca_path = os.environ.get("MEDSAM2_PROBE_CA", "")
        root = Path(ca_path if _set(ca_path) and Path(ca_path).is_file() else cert).read_bytes()
        identity = (Path(key).read_bytes(), Path(cert).read_bytes()) if _set(client_ca) else (None, None)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=root, private_key=identity[0], certificate_chain=identity[1]
        )
        name = os.environ.get("MEDSAM2_PROBE_SERVER_NAME", "") or "localhost"
        channel = grpc.secure_channel(args.address, credentials, options=[("grpc.ssl_target_name_override", name)])
    else:
        channel = grpc.insecure_channel(args.address)
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
        )
    except grpc.RpcError as exc:
        print(f"health check failed: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    finally:
        channel.close()
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
