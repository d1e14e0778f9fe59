"""Runs the edge's app on hypercorn: HTTP/1.1, and HTTP/2 by ALPN over TLS; TLS 1.3 only, as
the gateway's gRPC port; port 0 and the port file as every service; a graceful SIGTERM.

hypercorn rather than uvicorn: uvicorn speaks HTTP/1.1 only, hypercorn both versions (and
its h11/h2 stacks hand the body to the app in bounded pieces, so a body is refused while
it streams, before it is buffered).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import ssl
from pathlib import Path
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config, Sockets

from services.common.server import configure_logging
from services.common.telemetry import setup_telemetry
from services.common.tls import is_loopback
from services.edge.app import build_app
from services.edge.settings import EdgeSettings

log = logging.getLogger(__name__)
# How long a closing TLS connection waits for the peer's close_notify.
TLS_CLOSE_S = 2.0
# How often the certificate files are looked at for a renewal.
CERT_CHECK_S = 1.0


class EdgeConfig(Config):
    """hypercorn's config on a socket bound beforehand (port 0 reported), TLS 1.3 only."""

    def __init__(self, listener: socket.socket, tls: bool) -> None:
        super().__init__()
        self.listener = listener
        self.tls = tls
        self.context: ssl.SSLContext | None = None  # the one hypercorn serves with, once made

    def create_sockets(self) -> Sockets:
        return Sockets([self.listener] if self.tls else [], [] if self.tls else [self.listener], [])

    def create_ssl_context(self) -> ssl.SSLContext | None:
        context = super().create_ssl_context()
        if context is not None:
            # hypercorn allows TLS 1.2 (RFC 7540's floor); the edge, like the gRPC port, speaks 1.3.
            context.minimum_version = ssl.TLSVersion.TLSv1_3
        self.context = context
        return context


async def watch_certificate(config: EdgeConfig, cert: Path, key: Path, interval_s: float = CERT_CHECK_S) -> None:
    """Re-reads the certificate and key when either file changes, as the gRPC ports do: the next
    connection gets the renewed certificate, no restart. A pair caught mid-renewal (the key
    written, not yet the certificate) fails to load and the previous one stays until both are."""

    def stamp() -> tuple[tuple[int, int], ...]:
        return tuple((s.st_mtime_ns, s.st_size) for s in (cert.stat(), key.stat()))

    seen = stamp()
    while True:
        await asyncio.sleep(interval_s)
        try:
            now = stamp()
            if now == seen or config.context is None:
                continue
            config.context.load_cert_chain(certfile=str(cert), keyfile=str(key))
            seen = now
            log.info("TLS certificate reloaded")
        except (OSError, ssl.SSLError) as error:
            log.warning("TLS certificate not reloaded yet (%s); serving the previous one", type(error).__name__)


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    listener.bind((host, port))
    listener.set_inheritable(True)
    return listener


def _write_port(path: Path, port: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(str(port))
    tmp.replace(path)


def _quick_tls_close() -> None:
    """asyncio waits up to 30 s for a peer's TLS close_notify at shutdown; an idle keep-alive
    client never sends one, so every stop would take 30 s. hypercorn does not pass the
    setting through, so the edge process's start_server gets it (this process only)."""
    original = asyncio.start_server

    async def start_server(*args: Any, **kwargs: Any) -> asyncio.Server:
        if kwargs.get("ssl") is not None:
            kwargs.setdefault("ssl_shutdown_timeout", TLS_CLOSE_S)
        return await original(*args, **kwargs)

    asyncio.start_server = start_server  # type: ignore[assignment]


async def run(settings: EdgeSettings) -> None:
    tls = settings.tls_cert_file is not None and settings.tls_key_file is not None
    if not tls and not is_loopback(f"{settings.host}:0"):
        raise ValueError(f"no TLS certificate (CUTOUT_EDGE_TLS_CERT_FILE): plaintext on {settings.host} refused")
    _quick_tls_close()
    listener = _listen(settings.host, settings.port)
    config = EdgeConfig(listener, tls)
    if tls:
        config.certfile = str(settings.tls_cert_file)
        config.keyfile = str(settings.tls_key_file)
    config.alpn_protocols = ["h2", "http/1.1"]
    config.graceful_timeout = settings.shutdown_grace_s
    config.accesslog = None  # paths only would be fine, but URLs are the caller's business
    config.errorlog = log
    config.keep_alive_timeout = 30
    # Headers of at most 64 KiB; the body is the app's (services/edge/body.py).
    config.h11_max_incomplete_size = 64 * 1024
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    port = listener.getsockname()[1]
    if settings.port_file:
        _write_port(settings.port_file, port)
    log.info("listening on %s:%d (%s)", settings.host, port, "TLS 1.3, h2 and http/1.1" if tls else "plaintext")
    watcher = None
    if tls:
        assert settings.tls_cert_file is not None and settings.tls_key_file is not None
        watcher = asyncio.create_task(watch_certificate(config, settings.tls_cert_file, settings.tls_key_file))
    try:
        await serve(build_app(settings), config, shutdown_trigger=stopping.wait)  # type: ignore[arg-type]
    finally:
        if watcher is not None:
            watcher.cancel()
    log.info("stopped")


def main() -> None:
    settings = EdgeSettings()
    configure_logging(settings)
    telemetry = setup_telemetry("edge", settings.region)  # before the gateway channel exists
    try:
        asyncio.run(run(settings))
    finally:
        telemetry.shutdown()
