"""Client channels between services: large messages and quick reconnects."""

from __future__ import annotations

import grpc

# The client's channel options (cutout/transport.py) serve the services' channels too.
from cutout.transport import RECONNECT_OPTIONS as RECONNECT_OPTIONS
from cutout.transport import channel_options as channel_options
from services.common.settings import MAX_MESSAGE_BYTES, ServiceSettings
from services.common.tls import ReloadingChannel, is_loopback


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
