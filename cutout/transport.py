"""How a client reaches a Cutout gateway: message limits, reconnects, TLS, metadata names.

Part of the client package, so it imports nothing from the servers; the services use
the same definitions (services/common re-exports them).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import grpc

MIB = 1024 * 1024

# Inputs up to 50 MiB are served and a 25 MP RGBA PNG can come back larger than
# that, so every hop (servers and channels) allows messages well past gRPC's 4 MiB.
MAX_MESSAGE_BYTES = 256 * MIB

# The metadata entry that carries a caller's API key, and the one that carries the
# admin token for cutout.v1.Admin (never an API key).
API_KEY_METADATA = "x-api-key"
ADMIN_TOKEN_METADATA = "x-admin-token"

# A restarted server should be found again within about a second, not after gRPC's
# default reconnect backoff of up to two minutes.
RECONNECT_OPTIONS: list[tuple[str, int]] = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


def channel_options(max_message_bytes: int = MAX_MESSAGE_BYTES) -> list[tuple[str, int | str]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        *RECONNECT_OPTIONS,
        # A "dns:///name:port" target that resolves to several pods (a headless
        # Kubernetes Service) spreads calls over all of them, not one connection's pod.
        ("grpc.lb_policy_name", "round_robin"),
    ]


def channel_credentials(
    ca_file: Path | None = None, cert_file: Path | None = None, key_file: Path | None = None
) -> grpc.ChannelCredentials:
    """TLS trusting `ca_file` (else the system roots), presenting a certificate if given."""
    return grpc.ssl_channel_credentials(
        root_certificates=ca_file.read_bytes() if ca_file else None,
        private_key=key_file.read_bytes() if key_file else None,
        certificate_chain=cert_file.read_bytes() if cert_file else None,
    )


def is_loopback(target: str) -> bool:
    """Whether a gRPC target ("host:port", "dns:///host:port", "[::1]:port") names this machine."""
    host = target.split("///", 1)[-1]
    host = host[1 : host.index("]")] if host.startswith("[") else host.rsplit(":", 1)[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
