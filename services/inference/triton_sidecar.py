"""Triton's HTTP and metrics ports stay inside its pod; this carries what must leave.

Triton serves TLS on gRPC only: its HTTP endpoint (health) and its metrics endpoint
(Prometheus) have no TLS options. In a cell both bind to 127.0.0.1
(`--http-address`, `--metrics-address`), and this script, copied into the Triton image
(standard library only: the image's Python 3.10), is

- `probe ready|live`: the kubelet's exec probe, asking Triton's HTTP health endpoint on
  loopback (exit 0 when it answers 200);
- `metrics`: a sidecar serving GET /metrics over TLS 1.3 (and nothing older) with the
  pod's cell certificate, re-read when the files change, fetched from Triton's metrics
  endpoint on loopback; GET /healthz answers the sidecar's own probes.

    python3 triton_sidecar.py probe ready [--url http://127.0.0.1:8000]
    python3 triton_sidecar.py metrics --cert tls.crt --key tls.key [--port 8443]
        [--upstream http://127.0.0.1:8002/metrics]
"""

from __future__ import annotations

import argparse
import http.server
import logging
import os
import socket
import ssl
import sys
import threading
import urllib.error
import urllib.request

log = logging.getLogger("triton-sidecar")
TIMEOUT_S = 5.0


def probe(url: str, which: str) -> int:
    """0 when Triton's /v2/health/<which> answers 200, else 1 (an exec probe's verdict)."""
    try:
        with urllib.request.urlopen(f"{url}/v2/health/{which}", timeout=TIMEOUT_S) as answer:
            return 0 if answer.status == 200 else 1
    except (urllib.error.URLError, OSError) as error:
        print(f"triton {which}: {error}", file=sys.stderr)
        return 1


class ReloadingContext:
    """A TLS 1.3-only server context from PEM files, made anew when either file changes
    (a Secret the kubelet swaps); a pair that does not load (half-rotated) keeps the old one."""

    def __init__(self, cert_file: str, key_file: str) -> None:
        self.files = (cert_file, key_file)
        self._lock = threading.Lock()
        self._stamp = self._stat()
        self.context = self._load()

    def _stat(self) -> tuple[tuple[int, int, int], ...]:
        stats = [os.stat(path) for path in self.files]
        return tuple((s.st_mtime_ns, s.st_ino, s.st_size) for s in stats)

    def _load(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.load_cert_chain(*self.files)
        return context

    def current(self) -> ssl.SSLContext:
        with self._lock:
            try:
                stamp = self._stat()
                if stamp != self._stamp:
                    self.context, self._stamp = self._load(), stamp
                    log.info("certificate reloaded from %s", self.files[0])
            except (OSError, ssl.SSLError) as error:
                log.warning("certificate reload failed (%s); serving the previous one", type(error).__name__)
            return self.context


class MetricsServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], tls: ReloadingContext, upstream: str) -> None:
        self.tls, self.upstream = tls, upstream
        super().__init__(address, MetricsHandler)

    def get_request(self) -> tuple[socket.socket, object]:
        raw, address = self.socket.accept()
        raw.settimeout(TIMEOUT_S)
        # With the context current at this connection: a renewed certificate from the next
        # one on. The handshake waits for the request's own thread (finish_request), so a
        # slow or silent caller never holds up accepting others.
        return self.tls.current().wrap_socket(raw, server_side=True, do_handshake_on_connect=False), address

    def finish_request(self, request: ssl.SSLSocket, client_address: object) -> None:  # type: ignore[override]
        request.do_handshake()
        super().finish_request(request, client_address)

    def handle_error(self, request: object, client_address: object) -> None:
        # A plaintext or TLS 1.2 caller fails its handshake: one line, not a traceback.
        log.info("connection from %s failed: %s", client_address, sys.exc_info()[1])


class MetricsHandler(http.server.BaseHTTPRequestHandler):
    server: MetricsServer

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._answer(200, b"ok\n", "text/plain")
            return
        if self.path.split("?", 1)[0] != "/metrics":
            self._answer(404, b"not found\n", "text/plain")
            return
        try:
            with urllib.request.urlopen(self.server.upstream, timeout=TIMEOUT_S) as answer:
                body, kind = answer.read(), answer.headers.get("Content-Type", "text/plain")
        except (urllib.error.URLError, OSError) as error:
            self._answer(502, f"triton metrics unavailable: {error}\n".encode(), "text/plain")
            return
        self._answer(200, body, kind)

    def _answer(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # scrapes every few seconds: not worth a line each


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    probing = commands.add_parser("probe", help="exit 0 if Triton's HTTP health endpoint says so")
    probing.add_argument("which", choices=("ready", "live"))
    probing.add_argument("--url", default="http://127.0.0.1:8000")
    serving = commands.add_parser("metrics", help="serve Triton's metrics over TLS 1.3")
    serving.add_argument("--cert", required=True)
    serving.add_argument("--key", required=True)
    serving.add_argument("--host", default="0.0.0.0")
    serving.add_argument("--port", type=int, default=8443)
    serving.add_argument("--upstream", default="http://127.0.0.1:8002/metrics")
    serving.add_argument("--port-file", help="write the bound port here once listening (tests use port 0)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "probe":
        return probe(args.url, args.which)
    server = MetricsServer((args.host, args.port), ReloadingContext(args.cert, args.key), args.upstream)
    if args.port_file:
        with open(args.port_file + ".tmp", "w") as out:
            out.write(str(server.server_address[1]))
        os.replace(args.port_file + ".tmp", args.port_file)
    log.info("serving Triton's metrics over TLS 1.3 on %s:%d", args.host, server.server_address[1])
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
