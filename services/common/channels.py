"""Client channels between services: large messages, quick reconnects, keepalive, and
transparent retries of idempotent calls within a budget (gRPC service config)."""

from __future__ import annotations

import json

import grpc

# The client's channel options (cutout/transport.py) are the base of the services' too.
from cutout.transport import RECONNECT_OPTIONS as RECONNECT_OPTIONS
from cutout.transport import channel_options as client_channel_options
from services.common.settings import MAX_MESSAGE_BYTES, ServiceSettings
from services.common.tls import ReloadingChannel, is_loopback

# A connection whose peer vanished (a SIGKILLed pod, a partition) is noticed by a ping
# unanswered for 10 s while calls are open, not after the kernel's TCP timeout (minutes).
# Servers accept pings every 20 s (services/common/server.py).
KEEPALIVE_OPTIONS: list[tuple[str, int]] = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 0),
]

# Calls that may run twice without harm, retried on UNAVAILABLE (the peer was not reached,
# or went away): reads, and settling a reservation (commit and release are idempotent).
# Never Reserve (a retried reserve meets its own hold) or Store (a second copy).
IDEMPOTENT: dict[str, list[str]] = {
    "cutout.v1.Accounts": [
        "Authenticate",
        "Commit",
        "Release",
        "GetBalance",
        "ListLedger",
        "ListApiKeys",
        "GetProfile",
    ],
    "cutout.v1.Retention": ["FetchByToken", "FetchOwned", "ListOwned", "DeleteOwned", "EraseAccount"],
    "cutout.v1.Inference": ["Segment", "Erase"],  # pure functions of their request
}
SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [
                    {"service": service, "method": method}
                    for service, methods in IDEMPOTENT.items()
                    for method in methods
                ],
                "retryPolicy": {
                    "maxAttempts": 3,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ],
        # The budget: retries stop while more than half of recent calls failed (each failure
        # takes a token, each success gives 0.1 back), so an outage is not multiplied.
        "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
    }
)


def channel_options(max_message_bytes: int = MAX_MESSAGE_BYTES, *, ours: bool = True) -> list[tuple[str, int | str]]:
    """The client's options; `ours` (a Cutout service at the other end, which accepts the
    keepalive pings) adds keepalive and the retry policy. Triton keeps gRPC's defaults."""
    options = client_channel_options(max_message_bytes)
    if ours:
        options += [*KEEPALIVE_OPTIONS, ("grpc.enable_retries", 1), ("grpc.service_config", SERVICE_CONFIG)]
    return options


def mesh_channel(
    target: str, settings: ServiceSettings, max_message_bytes: int = MAX_MESSAGE_BYTES
) -> grpc.aio.Channel | ReloadingChannel:
    """A channel to another service of the cell: mutual TLS with this service's identity
    (settings.mesh_*, re-read when the files change), or plaintext when none is configured,
    to loopback only."""
    options = channel_options(max_message_bytes)
    if settings.mesh_ca_file:
        if not (settings.mesh_cert_file and settings.mesh_key_file):
            raise ValueError("MESH_CA_FILE needs MESH_CERT_FILE and MESH_KEY_FILE: the cell demands a certificate")
        return ReloadingChannel(target, settings.mesh_ca_file, settings.mesh_cert_file, settings.mesh_key_file, options)
    if not is_loopback(target):
        raise ValueError(f"no mesh certificate configured (MESH_CA_FILE): plaintext to {target} refused")
    return grpc.aio.insecure_channel(target, options=options)


def insecure_channel(target: str, max_message_bytes: int = MAX_MESSAGE_BYTES) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(target, options=channel_options(max_message_bytes))
