"""OpenTelemetry for every service, set up in one place.

Configured only by the standard `OTEL_*` environment variables:

- nothing is exported unless asked: with neither `OTEL_EXPORTER_OTLP_ENDPOINT` (or its
  `_TRACES_`/`_METRICS_` forms) nor `OTEL_TRACES_EXPORTER`/`OTEL_METRICS_EXPORTER` set,
  no SDK is installed and nothing tries to connect anywhere;
- `OTEL_TRACES_EXPORTER` / `OTEL_METRICS_EXPORTER`: `otlp`, `console` or `none`;
- `OTEL_SDK_DISABLED=true` turns everything off.

Privacy: server spans carry the RPC's service, method and status only (the stock
interceptor would add the caller's IP address and user agent); error spans carry the
status code name, never the message. Health checks and Triton readiness polls are
not traced.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata

import grpc
from opentelemetry import metrics, trace
from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient, filters
from opentelemetry.instrumentation.grpc._aio_server import OpenTelemetryAioServerInterceptor
from opentelemetry.instrumentation.logging import LoggingInstrumentor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.semconv.attributes.service_attributes import SERVICE_NAME, SERVICE_VERSION
from opentelemetry.trace import SpanKind, Status, StatusCode

log = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [trace=%(otelTraceID)s span=%(otelSpanID)s]: %(message)s"

# Calls that run every second or so and say nothing about requests.
_NOT_TRACED = filters.negate(filters.any_of(filters.health_check(), filters.method_name("ModelReady")))


@dataclass
class Telemetry:
    """What `setup_telemetry` installed; `shutdown()` flushes and stops exporting."""

    tracer_provider: TracerProvider | None = None
    meter_provider: MeterProvider | None = None

    @property
    def enabled(self) -> bool:
        return self.tracer_provider is not None

    def server_interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        if not self.tracer_provider:
            return []
        tracer = self.tracer_provider.get_tracer(__name__)
        return [_PrivateServerInterceptor(tracer, filter_=_NOT_TRACED)]

    def shutdown(self) -> None:
        if self.tracer_provider:
            self.tracer_provider.shutdown()
        if self.meter_provider:
            self.meter_provider.shutdown()


def _exporter_choice(signal: str) -> str:
    explicit = os.environ.get(f"OTEL_{signal}_EXPORTER")
    if explicit:
        return explicit.strip().lower()
    endpoint = os.environ.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    return "otlp" if endpoint else "none"


def setup_telemetry(service: str, region: str) -> Telemetry:
    """Installs the SDK if any export is configured. Call before any server or channel exists."""
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return Telemetry()
    traces, metrics_choice = _exporter_choice("TRACES"), _exporter_choice("METRICS")
    if traces == "none" and metrics_choice == "none":
        return Telemetry()

    resource = Resource.create(
        {
            SERVICE_NAME: f"cutout-{service}",
            SERVICE_VERSION: metadata.version("cutout"),
            "service.namespace": "cutout",
            "service.instance.id": f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}",
            "cloud.region": region,
        }
    )
    meter_provider = MeterProvider(resource=resource, metric_readers=_metric_readers(metrics_choice))
    metrics.set_meter_provider(meter_provider)

    tracer_provider = TracerProvider(resource=resource)
    if traces == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    elif traces == "console":
        tracer_provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    # RPC metrics come from the server spans, so spans exist even when only metrics leave.
    tracer_provider.add_span_processor(_RpcMetrics())
    trace.set_tracer_provider(tracer_provider)
    # Every aio channel made from now on (ours and tritonclient's) carries trace context.
    GrpcAioInstrumentorClient(filter_=_NOT_TRACED).instrument(tracer_provider=tracer_provider)
    log.info("telemetry on: traces %s, metrics %s", traces, metrics_choice)
    return Telemetry(tracer_provider, meter_provider)


def _metric_readers(choice: str) -> list[MetricReader]:
    if choice == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        return [PeriodicExportingMetricReader(OTLPMetricExporter())]
    if choice == "console":
        return [PeriodicExportingMetricReader(ConsoleMetricExporter())]
    return []


def logging_format_ready() -> None:
    """Log records carry the current trace and span ids (zeros outside a span)."""
    instrumentor = LoggingInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        # Ids into records only; logs themselves are never exported (no OTel log handler).
        instrumentor.instrument(
            set_logging_format=False, inject_trace_context=True, enable_log_auto_instrumentation=False
        )


class _PrivateServerInterceptor(OpenTelemetryAioServerInterceptor):
    """The stock server interceptor minus the caller's address and user agent."""

    def _start_span(self, handler_call_details, context, set_status_on_exception=False):  # type: ignore[no-untyped-def]
        service, _, method = handler_call_details.method.lstrip("/").partition("/")
        return self._tracer.start_as_current_span(
            name=handler_call_details.method,
            kind=SpanKind.SERVER,
            # OpenTelemetry's RPC conventions: the current names (rpc.system.name, the
            # fully qualified rpc.method, rpc.response.status_code), and the older ones
            # that the stock instrumentation still sets on errors and trace tools still read.
            attributes={
                "rpc.system.name": "grpc",
                "rpc.method": f"{service}/{method}",
                "rpc.response.status_code": grpc.StatusCode.OK.name,
                "rpc.system": "grpc",
                "rpc.service": service,
                "rpc.grpc.status_code": grpc.StatusCode.OK.value[0],
            },
            set_status_on_exception=set_status_on_exception,
        )


# The RPC duration metric as OpenTelemetry's RPC conventions name it (Prometheus, through
# the collector: rpc_server_call_duration_seconds; k8s/monitoring's alerts and dashboards).
RPC_SERVER_DURATION = "rpc.server.call.duration"
RPC_SERVER_DURATION_UNIT = "s"


class _RpcMetrics(SpanProcessor):
    """Requests and latency per RPC and status, from the server spans as they end."""

    def __init__(self) -> None:
        meter = metrics.get_meter(__name__)
        self._duration = meter.create_histogram(
            RPC_SERVER_DURATION, unit=RPC_SERVER_DURATION_UNIT, description="Duration of RPCs served"
        )

    def on_end(self, span: ReadableSpan) -> None:
        if span.kind != SpanKind.SERVER or span.start_time is None or span.end_time is None:
            return
        attributes = span.attributes or {}
        # Read from the numeric code, which the stock instrumentation also sets on errors.
        code = grpc_status(int(attributes.get("rpc.grpc.status_code", 0)))  # type: ignore[arg-type]
        self._duration.record(
            (span.end_time - span.start_time) / 1e9,
            {
                "rpc.system.name": "grpc",
                "rpc.method": str(attributes.get("rpc.method", "")),
                "rpc.response.status_code": code.name,
            },
        )


def grpc_status(number: int) -> grpc.StatusCode:
    return next((code for code in grpc.StatusCode if code.value[0] == number), grpc.StatusCode.UNKNOWN)


def mark_error(code: grpc.StatusCode) -> None:
    """Marks the current server span as failed with `code` (abort_with_status does not).

    Only the code goes in: messages can quote what the caller sent.
    """
    span = trace.get_current_span()
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    span.set_attribute("rpc.response.status_code", code.name)
    span.set_status(Status(StatusCode.ERROR, code.name))


tracer = trace.get_tracer("cutout")
meter = metrics.get_meter("cutout")


@contextlib.contextmanager
def stage(name: str) -> Iterator[trace.Span]:
    """A child span for one stage of work (decode, encode, ...)."""
    with tracer.start_as_current_span(name) as span:
        yield span
