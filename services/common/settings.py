"""Settings shared by every service; each service subclasses ServiceSettings with its own prefix."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

# Defined with the client (cutout/transport.py), which must not depend on the servers.
from cutout.transport import ADMIN_TOKEN_METADATA as ADMIN_TOKEN_METADATA
from cutout.transport import API_KEY_METADATA as API_KEY_METADATA
from cutout.transport import MAX_MESSAGE_BYTES as MAX_MESSAGE_BYTES
from cutout.transport import MIB as MIB

# Set by the gateway on the calls it forwards (never taken from a client): the caller's
# source address, IPv6 by its /64 (the cap on free sign-up grants counts by it).
SOURCE_METADATA = "x-cutout-source"


class ServiceSettings(BaseSettings):
    """Read from environment variables `<prefix>HOST`, `<prefix>PORT`, ..."""

    model_config = SettingsConfigDict(env_prefix="CUTOUT_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 0  # 0 picks a free port; see port_file
    # If set, the bound port is written here once the server listens (the mesh
    # launcher and tests read it, which lets every service start on port 0).
    port_file: Path | None = None
    # On SIGTERM: how long in-flight calls may take to finish before they are cancelled.
    shutdown_grace_s: float = 30.0
    # Then how long the process stays up: gRPC counts a call finished once its answer is
    # handed to the transport, and exiting at once can cut a large answer still being sent.
    shutdown_linger_s: float = 1.0
    # Calls beyond this many at once get RESOURCE_EXHAUSTED from gRPC itself.
    max_concurrent_rpcs: int = 256
    max_message_bytes: int = MAX_MESSAGE_BYTES
    # The largest message this server accepts, if smaller than max_message_bytes (the
    # gateway's public port: the input cap plus framing, refused from its length prefix).
    max_receive_message_bytes: int | None = None
    # How often health is re-evaluated from the service's own dependencies.
    health_interval_s: float = 1.0
    log_level: str = "INFO"
    # Keep freed memory for the next request instead of faulting it in again (glibc; see
    # services/common/memory.py). Off returns memory to the system sooner, at a CPU cost.
    keep_freed_memory: bool = True
    # The region this cell serves (resource attribute of its telemetry).
    region: str = "local"
    # TLS of this service's listener: its certificate and key (PEM files, re-read when
    # they change). Without them the service listens in plaintext, and only on loopback.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # Mutual TLS: callers must present a certificate this CA signed (the cell's CA), and
    # only the services named in allowed_callers (by the certificate's common name) may
    # call this service's own RPCs. Health and reflection answer any cell certificate.
    tls_client_ca_file: Path | None = None
    allowed_callers: tuple[str, ...] = ("gateway",)
    # This service's identity for calls it makes inside the cell: the cell's CA, and the
    # certificate and key it presents (the same files as its listener's, inside the cell).
    mesh_ca_file: Path | None = None
    mesh_cert_file: Path | None = None
    mesh_key_file: Path | None = None
