"""OTLP over TLS, as the cells send it (issue #14): a service's exporter, configured only by
the standard variables the manifests set (`https://` endpoint, OTEL_EXPORTER_OTLP_CERTIFICATE
= the cell CA), delivers to a collector serving a cell certificate, over TLS 1.3, and sends
nothing to one whose certificate another CA signed (tests/deploy/test_k8s.py checks the manifests)."""

from __future__ import annotations

import os
import subprocess
import sys

from services.common.tls import CellPki, server_credentials
from services.launcher import ROOT
from tests.otlp_receiver import OtlpReceiver

# One span through the services' own telemetry set-up, then a flushing shutdown.
EXPORT_ONE_SPAN = """
from opentelemetry import trace
from services.common.telemetry import setup_telemetry
telemetry = setup_telemetry("tls-check", "local")
with trace.get_tracer("tls-check").start_as_current_span("sent-over-tls"):
    pass
telemetry.shutdown()
"""


def _export(receiver: OtlpReceiver, ca_file) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_EXPORTER_OTLP_CERTIFICATE": str(ca_file),
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "3",
    }
    env.pop("OTEL_EXPORTER_OTLP_INSECURE", None)
    return subprocess.run(
        [sys.executable, "-c", EXPORT_ONE_SPAN], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def _collector(pki: CellPki) -> OtlpReceiver:
    identity = pki.issue("otel-collector")
    return OtlpReceiver(server_credentials(identity.cert_file, identity.key_file)).start()


def test_spans_reach_a_collector_with_a_cell_certificate_over_tls(tmp_path):
    pki = CellPki(tmp_path / "cell")
    receiver = _collector(pki)
    try:
        assert receiver.endpoint.startswith("https://")
        done = _export(receiver, pki.ca_file)
        assert done.returncode == 0, done.stderr
        assert [s.span.name for s in receiver.spans()] == ["sent-over-tls"]
    finally:
        receiver.stop()


def test_a_collector_certified_by_another_ca_gets_nothing(tmp_path):
    cell, stranger = CellPki(tmp_path / "cell"), CellPki(tmp_path / "stranger")
    receiver = _collector(stranger)
    try:
        done = _export(receiver, cell.ca_file)  # the exporter trusts the cell's CA only
        assert done.returncode == 0, done.stderr
        assert receiver.spans() == [] and receiver.trace_requests == []
    finally:
        receiver.stop()
