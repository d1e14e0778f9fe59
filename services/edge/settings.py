from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import MIB, ServiceSettings


class EdgeSettings(ServiceSettings):
    """Environment variables CUTOUT_EDGE_*."""

    model_config = SettingsConfigDict(env_prefix="CUTOUT_EDGE_", extra="ignore")

    port: int = 8443
    # The cell's public gRPC API, which does all the work: the edge keeps no credit logic,
    # no limits and no state of its own, it translates (one copy of charging: the gateway's).
    gateway_target: str = "127.0.0.1:50051"
    # The CA the gateway's certificate is checked against (the cell's CA); unset: the
    # system's roots. The edge is a client of the public port like any other.
    gateway_ca_file: Path | None = None
    # The name the gateway's certificate carries when gateway_target's host is not it (on
    # Kubernetes: dns:///gateway:50051, whose certificate is the region's public name).
    gateway_tls_name: str = ""
    # Plaintext to the gateway: only to a loopback address (a gateway without TLS, in tests).
    gateway_plaintext: bool = False
    # The largest request body read: the gateway's 50 MiB input cap as base64 (4/3) plus a
    # background picture's room and the form's framing. A larger Content-Length is refused
    # before a byte of the body is read, a chunked body as soon as it passes the limit.
    max_body_bytes: int = Field(default=72 * MIB, ge=1024)
    # Requests in flight at once; beyond it a request is refused (503, Retry-After) before its
    # body is read. With max_body_bytes this bounds the edge's memory: about
    # max_requests x (body + answer) at worst.
    max_requests: int = Field(default=32, ge=1)
    # Upper bound for one call to the gateway.
    gateway_timeout_s: float = 120.0
    # Retry-After of a request refused because max_requests are in flight.
    busy_retry_after_s: float = 1.0
