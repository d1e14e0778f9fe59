"""Triton's ports besides gRPC (issue #14): embedded, they are off; in a cell, HTTP and
metrics bind to the pod's loopback and the metrics leave only through a TLS 1.3 sidecar
(services/inference/triton_sidecar.py; the manifests are checked in tests/deploy/test_k8s.py)."""

from __future__ import annotations

import http.client
import http.server
import os
import shutil
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from services.common.tls import CellPki
from services.launcher import Mesh

SIDECAR = Path(__file__).resolve().parents[2] / "services" / "inference" / "triton_sidecar.py"
METRICS = b'# HELP nv_inference_request_success\nnv_inference_request_success{model="m",version="1"} 3\n'


def _listening_ports(pid: int) -> set[int]:
    """The TCP ports process `pid` listens on, from its socket inodes and /proc/net/tcp{,6}."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: LISTEN
                ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


def test_the_embedded_triton_listens_on_its_grpc_port_alone(mesh: Mesh):
    """HTTP and metrics are off (`--allow-http=false`, `--allow-metrics=false`): the only
    port is gRPC, which is mutual TLS (tests/mesh/test_tls.py)."""
    assert mesh.triton is not None and mesh.triton.process is not None
    assert _listening_ports(mesh.triton.process.pid) == {mesh.triton.grpc_port}


# --- the cell's metrics sidecar, run as the Triton image runs it ------------------


class _Triton(http.server.BaseHTTPRequestHandler):
    """Stands in for Triton's loopback endpoints: metrics, and health (ready, not live)."""

    def do_GET(self) -> None:
        status, body = {"/metrics": (200, METRICS), "/v2/health/ready": (200, b"")}.get(self.path, (503, b""))
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def triton_endpoints() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Triton)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _install(source: Path, target: Path) -> None:
    staged = target.with_name(f".{target.name}.new")
    shutil.copyfile(source, staged)
    os.replace(staged, target)


def _client(ca_file: Path, *, tls12: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_file))
    if tls12:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    return context


def _get(port: int, path: str, context: ssl.SSLContext) -> tuple[int, bytes, int]:
    """Status, body and the serial of the certificate the server presented."""
    connection = http.client.HTTPSConnection("localhost", port, context=context, timeout=10)
    try:
        connection.connect()
        der = connection.sock.getpeercert(binary_form=True)
        assert connection.sock.version() == "TLSv1.3"
        connection.request("GET", path)
        answer = connection.getresponse()
        return answer.status, answer.read(), x509.load_der_x509_certificate(der).serial_number
    finally:
        connection.close()


def test_the_metrics_sidecar_serves_triton_metrics_over_tls13_only(tmp_path, triton_endpoints):
    pki = CellPki(tmp_path / "pki")
    mounted = tmp_path / "mesh"  # as the kubelet mounts the pod's Secret
    mounted.mkdir()
    cert_file, key_file = mounted / "tls.crt", mounted / "tls.key"
    first = pki.issue("triton")
    _install(first.key_file, key_file)
    _install(first.cert_file, cert_file)
    port_file = tmp_path / "port"
    # -I -S: no site-packages, as in the NGC image: the sidecar needs the standard library only.
    command = [sys.executable, "-I", "-S", str(SIDECAR), "metrics", "--cert", str(cert_file), "--key", str(key_file)]
    command += ["--host", "127.0.0.1", "--port", "0", "--port-file", str(port_file)]
    command += ["--upstream", f"{triton_endpoints}/metrics"]
    sidecar = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists():
            assert sidecar.poll() is None and time.monotonic() < deadline, sidecar.stdout.read()  # type: ignore[union-attr]
            time.sleep(0.05)
        port = int(port_file.read_text())
        first_serial = x509.load_pem_x509_certificate(cert_file.read_bytes()).serial_number

        status, body, serial = _get(port, "/metrics", _client(pki.ca_file))
        assert (status, body, serial) == (200, METRICS, first_serial)
        assert _get(port, "/healthz", _client(pki.ca_file))[0] == 200

        with pytest.raises(ssl.SSLError):
            _get(port, "/metrics", _client(pki.ca_file, tls12=True))
        plain = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            plain.request("GET", "/metrics")
            plain.getresponse()
        plain.close()
        with pytest.raises(ssl.SSLCertVerificationError):  # a client of another cell does not trust it
            _get(port, "/metrics", _client(CellPki(tmp_path / "other").ca_file))

        # Renewed (cert-manager, new key): the next connection gets the new certificate.
        renewed = pki.issue("triton")
        new_serial = x509.load_pem_x509_certificate(renewed.cert_file.read_bytes()).serial_number
        assert new_serial != serial
        _install(renewed.key_file, key_file)
        _install(renewed.cert_file, cert_file)
        status, body, served = _get(port, "/metrics", _client(pki.ca_file))
        assert (status, body, served) == (200, METRICS, new_serial)
        assert sidecar.poll() is None
    finally:
        sidecar.terminate()
        sidecar.wait(10)


def test_the_exec_probe_asks_triton_health_on_loopback(triton_endpoints, tmp_path):
    def probe(which: str, url: str) -> int:
        command = [sys.executable, "-I", "-S", str(SIDECAR), "probe", which, "--url", url]
        return subprocess.run(command, capture_output=True, timeout=30).returncode

    assert probe("ready", triton_endpoints) == 0
    assert probe("live", triton_endpoints) == 1  # the stand-in answers 503 there
    assert probe("ready", "http://127.0.0.1:9") == 1  # nobody listening
