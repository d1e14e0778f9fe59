"""One way to run a Cutout service: an asyncio gRPC server with health, reflection,
settings from the environment and a graceful SIGTERM.

A service describes itself with a `ServiceSpec`, made by a `build(settings)` function
that runs inside the event loop (gRPC aio channels must be created there), and calls
`run_service(build, settings)` from its `__main__`. Health stays NOT_SERVING until `spec.ready()` says the service's
own dependencies answer, and is re-evaluated every `settings.health_interval_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common.errors import ErrorBoundary, KnownErrors
from services.common.memory import keep_freed_memory
from services.common.settings import MIB, ServiceSettings
from services.common.telemetry import LOG_FORMAT, logging_format_ready, setup_telemetry
from services.common.tls import CallerCheck, is_loopback, server_credentials

log = logging.getLogger(__name__)

# A health name that is SERVING while the process answers at all, whatever its
# dependencies say: what a liveness probe asks (restarting a service because its
# database is down would not bring the database back). Readiness asks "" or the
# service's own name, which follow the dependencies.
LIVENESS = "liveness"

# Clients are asked to reconnect every few minutes (calls in flight finish first), so
# that their DNS re-resolution finds replicas added since and load spreads onto them.
CONNECTION_AGE_OPTIONS: list[tuple[str, int]] = [("grpc.max_connection_age_ms", 300_000)]
# Clients' keepalive pings (services/common/channels.py: every 30 s while calls are open)
# are welcome down to every 20 s; faster ones would be answered with GOAWAY.
KEEPALIVE_SERVER_OPTIONS: list[tuple[str, int]] = [("grpc.http2.min_recv_ping_interval_without_data_ms", 20_000)]


async def _always_ready() -> bool:
    return True


async def _nothing() -> None:
    return None


@dataclass(frozen=True)
class PeriodicJob:
    """Blocking work the service repeats (sweeps); runs in a thread, every `interval_s`.

    What `run` returns is logged when it is truthy (say, a report of what was swept).
    """

    name: str
    interval_s: float
    run: Callable[[], object]


@dataclass
class ServiceSpec:
    """What `run_service` needs to know about one service."""

    # Full names of the gRPC services offered, e.g. "cutout.v1.Inference".
    service_names: Sequence[str]
    # Adds the servicers to the server.
    register: Callable[[grpc.aio.Server], None]
    # True once the service's own dependencies answer (Triton's model, a downstream).
    ready: Callable[[], Awaitable[bool]] = _always_ready
    # Runs after the server has stopped: close channels, flush, ...
    close: Callable[[], Awaitable[None]] = _nothing
    jobs: Sequence[PeriodicJob] = ()
    # Run after the caller check and telemetry's, before the handler (the gateway's admission).
    interceptors: Sequence[grpc.aio.ServerInterceptor] = ()
    # Methods ("/pkg.Service/Method") that also answer callers beyond settings.allowed_callers.
    callers_by_method: Mapping[str, Sequence[str]] = field(default_factory=dict)
    # Runs once the server has started (a second listener of the service, say).
    on_start: Callable[[], Awaitable[None]] = _nothing
    # Exceptions of the service's own libraries and the errors callers get for them (the
    # error boundary makes anything else INTERNAL with an opaque id).
    known_errors: KnownErrors = field(default_factory=dict)


def grpc_message_options(settings: ServiceSettings) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_receive_message_length", settings.max_receive_message_bytes or settings.max_message_bytes),
        # A fixed 8 MiB receive window per stream. With BDP probing on, gRPC grew it as fast
        # senders pushed (30 MiB of 12 MP photos held in transport buffers beyond the
        # gateway's stream window, in 2 of 8 runs of tests/mesh/test_stream.py's fast sender);
        # fixed, the same sender stays 24 items ahead every time, and runs faster
        # (docs/decisions/http2-window.md).
        ("grpc.http2.bdp_probe", 0),
        ("grpc.http2.lookahead_bytes", 8 * MIB),
    ]


def configure_logging(settings: ServiceSettings) -> None:
    logging_format_ready()
    logging.basicConfig(level=settings.log_level.upper(), format=LOG_FORMAT)


class RunningService:
    """A started server; `stop()` drains it the way SIGTERM does."""

    def __init__(self, server: grpc.aio.Server, port: int, spec: ServiceSpec, settings: ServiceSettings):
        self.server = server
        self.port = port
        self.health = health.aio.HealthServicer()
        self._spec = spec
        self._settings = settings
        self._health_task: asyncio.Task[None] | None = None
        self._jobs: list[asyncio.Task[None]] = []

    async def _watch_health(self) -> None:
        names = ["", *self._spec.service_names]
        last: int | None = None
        while True:
            try:
                ok = await self._spec.ready()
            except Exception:  # a failing probe means "not ready", never a dead watcher
                log.exception("readiness probe failed")
                ok = False
            status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
            if status != last:
                for name in names:
                    await self.health.set(name, status)
                log.info("health: %s", health_pb2.HealthCheckResponse.ServingStatus.Name(status))
                last = status
            await asyncio.sleep(self._settings.health_interval_s)

    async def _repeat(self, job: PeriodicJob) -> None:
        while True:
            await asyncio.sleep(job.interval_s)
            try:
                outcome = await asyncio.to_thread(job.run)
            except Exception as error:  # the next round may succeed (a database back up)
                log.error("%s failed: %s", job.name, type(error).__name__)
                continue
            if outcome:  # quiet when there was nothing to do
                log.info("%s: %s", job.name, outcome)

    async def stop(self) -> None:
        """Stop accepting calls, let in-flight ones finish (up to the grace), close."""
        log.info("draining: in-flight calls have %.0fs to finish", self._settings.shutdown_grace_s)
        for task in [*self._jobs, self._health_task]:
            if task:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self._settings.shutdown_grace_s)
        await asyncio.sleep(self._settings.shutdown_linger_s)  # see the setting
        await self._spec.close()
        log.info("stopped")


async def start_service(
    spec: ServiceSpec, settings: ServiceSettings, interceptors: Sequence[grpc.aio.ServerInterceptor] = ()
) -> RunningService:
    # Telemetry's first, so that what the service's own interceptors do (the gateway
    # authenticates at admission) is inside the call's span.
    # The error boundary last: innermost, around the handler itself, inside the call's span.
    interceptors = [*interceptors, *spec.interceptors, ErrorBoundary(spec.known_errors)]
    if settings.tls_client_ca_file is not None:
        # Mutual TLS: only the allowed services may call this one's own RPCs.
        interceptors = [
            CallerCheck(spec.service_names, settings.allowed_callers, spec.callers_by_method),
            *interceptors,
        ]
    server = grpc.aio.server(
        interceptors=list(interceptors),
        options=[*grpc_message_options(settings), *CONNECTION_AGE_OPTIONS, *KEEPALIVE_SERVER_OPTIONS],
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
    )
    spec.register(server)
    address = f"{settings.host}:{settings.port}"
    if settings.tls_cert_file and settings.tls_key_file:
        credentials = server_credentials(settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file)
        port = server.add_secure_port(address, credentials)
    elif is_loopback(address):
        log.warning("no certificate configured: plaintext on loopback only (development)")
        port = server.add_insecure_port(address)
    else:
        raise RuntimeError(
            f"refusing to listen in plaintext on {address}: set <PREFIX>TLS_CERT_FILE and TLS_KEY_FILE "
            "(and TLS_CLIENT_CA_FILE inside the cell), or listen on 127.0.0.1"
        )
    if port == 0:
        raise RuntimeError(f"could not listen on {settings.host}:{settings.port}")
    running = RunningService(server, port, spec, settings)
    for name in ["", *spec.service_names]:
        await running.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    await running.health.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(running.health, server)
    reflection.enable_server_reflection(
        [*spec.service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
        server,
    )
    await server.start()
    await spec.on_start()
    running._health_task = asyncio.create_task(running._watch_health())
    running._jobs = [asyncio.create_task(running._repeat(job)) for job in spec.jobs]
    if settings.port_file:
        _write_atomically(settings.port_file, str(port))
    log.info("listening on %s:%d (%s)", settings.host, port, _security(settings))
    return running


S = TypeVar("S", bound=ServiceSettings)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def serve(name: str, build: Callable[[S], ServiceSpec], settings: S) -> None:
    """Runs until SIGTERM or SIGINT, then drains and returns (the process exits 0).

    Signals after the first are already handled: a terminal's Ctrl-C reaches every process
    of its group, and then a launcher may send SIGTERM too.
    """
    # Telemetry first: its instrumentation must be in place before any channel exists.
    telemetry = setup_telemetry(name, settings.region)
    running = await start_service(build(settings), settings, telemetry.server_interceptors())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def received(signal_name: str) -> None:
        log.info("%s received%s", signal_name, "; already draining" if stop.is_set() else "")
        stop.set()

    def on_signal(signum: int, frame: object) -> None:
        loop.call_soon_threadsafe(received, signal.Signals(signum).name)

    # Handlers of the process, not `loop.add_signal_handler`: asyncio puts the default
    # action (death by the signal, exit -15) back when its loop closes, and so does Python
    # for its own handlers as it exits; a late signal would then cut the exit short.
    for signum in STOP_SIGNALS:
        signal.signal(signum, on_signal)
    try:
        await stop.wait()
        await running.stop()
        telemetry.shutdown()  # flushes what the drained calls recorded
    finally:
        for signum in STOP_SIGNALS:  # from here on the process only exits
            signal.signal(signum, signal.SIG_IGN)


def run_service(name: str, build: Callable[[S], ServiceSpec], settings: S) -> None:
    """The whole life of service `name` (e.g. "inference"): what its `__main__` calls."""
    configure_logging(settings)
    if settings.keep_freed_memory:
        keep_freed_memory()
    asyncio.run(serve(name, build, settings))


def _security(settings: ServiceSettings) -> str:
    if not settings.tls_cert_file:
        return "plaintext"
    return "mutual TLS" if settings.tls_client_ca_file else "TLS"


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
