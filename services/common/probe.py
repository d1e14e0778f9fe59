"""A health probe that speaks the service's own TLS (the kubelet's gRPC probes speak plaintext only).

    python -m services.common.probe accounts cutout.v1.Accounts   # exit 0 if SERVING

It reads the service's settings from the same environment (CUTOUT_<NAME>_*): the port,
the certificate it serves and the cell identity it holds, and asks its health service on
loopback. The name checked is the first DNS name of the served certificate; its issuer
is the cell's CA (client CA or mesh CA) or, for the gateway's public certificate, one of
the system's roots.
"""

from __future__ import annotations

import sys

import grpc
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings
from services.common.tls import channel_credentials


def probe(name: str, service: str, timeout_s: float = 3.0) -> int:
    """The health status of `service` at the local service `name`."""

    class Settings(ServiceSettings):
        model_config = SettingsConfigDict(env_prefix=f"CUTOUT_{name.upper()}_", extra="ignore")

    settings = Settings()
    options: list[tuple[str, str]] = []
    if settings.tls_cert_file:
        served = x509.load_pem_x509_certificate(settings.tls_cert_file.read_bytes())
        names = served.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        options.append(("grpc.ssl_target_name_override", names.get_values_for_type(x509.DNSName)[0]))
        roots = settings.tls_client_ca_file
        if roots is None and settings.mesh_ca_file:  # the gateway: its public certificate may be the cell's
            cell = x509.load_pem_x509_certificate(settings.mesh_ca_file.read_bytes())
            roots = settings.mesh_ca_file if served.issuer == cell.subject else None
        credentials = channel_credentials(roots, settings.mesh_cert_file, settings.mesh_key_file)
        channel = grpc.secure_channel(f"127.0.0.1:{settings.port}", credentials, options=options)
    else:
        channel = grpc.insecure_channel(f"127.0.0.1:{settings.port}")
    with channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
        )
    return reply.status


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m services.common.probe <service> <health name>", file=sys.stderr)
        return 2
    try:
        status = probe(*argv)
    except grpc.RpcError as error:
        print(f"probe: {error.code().name}", file=sys.stderr)  # type: ignore[attr-defined]
        return 1
    print(health_pb2.HealthCheckResponse.ServingStatus.Name(status))
    return 0 if status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
