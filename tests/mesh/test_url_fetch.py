"""URL fetch (issue #29) through the real mesh: image_url and background_image_url on the
gRPC API and the HTTP edge, from a picture server on loopback that the session's gateway
allows by the name "localhost" only. Every internal address (and a name or a redirect
leading to one) is refused before any connection to it, and charged nothing."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import numpy as np
import pytest
import remove_bg_api
import requests
from google.rpc import error_details_pb2

from cutout.v1 import account_pb2, cutout_pb2, cutout_pb2_grpc, options_pb2
from services.common.errors import error_details
from services.launcher import Mesh
from tests.conftest import Customer, another_gateway, decode, encode, new_account


class Pictures:
    """A picture server on 127.0.0.1 that counts the requests for each path."""

    def __init__(self, photo: bytes, backdrop: bytes) -> None:
        self.hits: Counter[str] = Counter()
        pictures = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                pictures.hits[path] += 1
                if path in ("/photo.png", "/internal-target.png"):
                    self._send(200, photo)
                elif path == "/backdrop.png":
                    self._send(200, backdrop)
                elif path == "/to-internal":  # a "public" URL that leads inside
                    self._redirect(f"http://127.0.0.1:{pictures.port}/internal-target.png")
                elif path == "/to-allowed":
                    self._redirect(f"http://localhost:{pictures.port}/photo.png")
                elif path == "/loop":
                    self._redirect("/loop")
                elif path == "/big":
                    self._send(200, b"\xff" * 300_000)
                elif path == "/slow":
                    time.sleep(3)
                    self._send(200, photo)
                else:
                    self._send(404, b"no such picture")

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except OSError:  # the gateway stopped reading (a body over its limit)
                    pass

            def _redirect(self, location: str) -> None:
                self.send_response(302)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str, host: str = "localhost") -> str:
        return f"http://{host}:{self.port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def pictures(astronaut_png: bytes) -> Iterator[Pictures]:
    from PIL import Image

    backdrop = encode(Image.new("RGB", (64, 64), (250, 20, 20)), "PNG")
    server = Pictures(astronaut_png, backdrop)
    yield server
    server.close()


@pytest.fixture(scope="module")
def customer(mesh: Mesh, raw_channel) -> Customer:
    return new_account(raw_channel, mesh.admin_token, credits=20)


@pytest.fixture(scope="module")
def stub(raw_channel) -> cutout_pb2_grpc.CutoutStub:
    return cutout_pb2_grpc.CutoutStub(raw_channel)


def _balance(stub: cutout_pb2_grpc.CutoutStub, customer: Customer) -> Decimal:
    answer = stub.GetBalance(account_pb2.GetBalanceRequest(), metadata=customer.metadata, timeout=30)
    return Decimal(answer.available_decimal)


def _remove(stub, customer: Customer, url: str = "", image: bytes = b"", **options: object):
    request = cutout_pb2.RemoveBackgroundRequest(
        image=image, image_url=url, options=options_pb2.RemoveBackgroundOptions(**options)
    )
    return stub.RemoveBackground(request, metadata=customer.metadata, timeout=60)


def _reason(error: grpc.RpcError) -> str:
    return next(d.reason for d in error_details(error) if isinstance(d, error_details_pb2.ErrorInfo))


def test_an_allowed_host_is_fetched_and_charged(stub, customer: Customer, pictures: Pictures):
    before = _balance(stub, customer)
    answer = _remove(stub, customer, pictures.url("/photo.png"), format=options_pb2.OUTPUT_FORMAT_MASK)
    assert (answer.result.width, answer.result.height) == (512, 512)
    assert answer.credits_charged_decimal == "1" and _balance(stub, customer) == before - 1
    # A redirect to an allowed host is followed.
    assert _remove(stub, customer, pictures.url("/to-allowed")).result.width == 512


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("127.0.0.1", "URL_ADDRESS_REFUSED"),
        ("[::1]", "URL_ADDRESS_REFUSED"),
        ("[::ffff:127.0.0.1]", "URL_ADDRESS_REFUSED"),
        ("10.1.2.3", "URL_ADDRESS_REFUSED"),
        ("169.254.169.254", "URL_ADDRESS_REFUSED"),
        ("[fe80::1]", "URL_ADDRESS_REFUSED"),
        ("vm", "URL_ADDRESS_REFUSED"),  # a name (/etc/hosts) that resolves to 127.0.0.1
    ],
)
def test_internal_addresses_are_refused_before_connecting_and_uncharged(
    stub, customer: Customer, pictures: Pictures, host: str, reason: str
):
    before_hits, before = pictures.hits["/internal-target.png"], _balance(stub, customer)
    with pytest.raises(grpc.RpcError) as caught:
        _remove(stub, customer, pictures.url("/internal-target.png", host))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _reason(caught.value) == reason
    assert "internal-target" not in caught.value.details() and host.strip("[]") not in caught.value.details()
    assert pictures.hits["/internal-target.png"] == before_hits, "the server was reached"
    assert _balance(stub, customer) == before


def test_a_redirect_to_an_internal_address_is_refused(mesh: Mesh, stub, customer: Customer, pictures: Pictures):
    before = _balance(stub, customer)
    with pytest.raises(grpc.RpcError) as caught:
        _remove(stub, customer, pictures.url("/to-internal"))
    assert _reason(caught.value) == "URL_ADDRESS_REFUSED"
    assert pictures.hits["/to-internal"] >= 1 and pictures.hits["/internal-target.png"] == 0
    with pytest.raises(grpc.RpcError) as caught:
        _remove(stub, customer, pictures.url("/loop"))
    assert _reason(caught.value) == "URL_TOO_MANY_REDIRECTS"
    for url, expected in [
        ("ftp://localhost/photo.png", "URL_SCHEME_REFUSED"),
        ("file:///etc/passwd", "URL_SCHEME_REFUSED"),
        ("http://user:secret@localhost/photo.png", "URL_CREDENTIALS_REFUSED"),
        (pictures.url("/missing.png"), "URL_FETCH_FAILED"),
        ("http://no-such-host.invalid/photo.png", "URL_HOST_NOT_FOUND"),
    ]:
        with pytest.raises(grpc.RpcError) as caught:
            _remove(stub, customer, url)
        assert _reason(caught.value) == expected, url
    with pytest.raises(grpc.RpcError) as caught:
        _remove(stub, customer, pictures.url("/photo.png"), image=b"\x89PNG")
    assert "not both" in caught.value.details()
    assert _balance(stub, customer) == before
    # Neither the URLs nor their hosts reach a log line (the refusals name the rule only).
    for service in (mesh.gateway, mesh.edge):
        log = service.log_path.read_text()
        assert "to-internal" not in log and "internal-target" not in log and "no-such-host" not in log, service.name


def test_background_image_url(stub, customer: Customer, pictures: Pictures):
    answer = _remove(
        stub,
        customer,
        pictures.url("/photo.png"),
        format=options_pb2.OUTPUT_FORMAT_PNG_ON_COLOR,
        background_image_url=pictures.url("/backdrop.png"),
    )
    corner = np.asarray(decode(answer.result.image).convert("RGB"), np.int16)[3, 508]
    assert np.abs(corner - (250, 20, 20)).max() <= 10, corner
    with pytest.raises(grpc.RpcError) as caught:
        _remove(
            stub,
            customer,
            pictures.url("/photo.png"),
            format=options_pb2.OUTPUT_FORMAT_PNG_ON_COLOR,
            background_image_url=pictures.url("/backdrop.png", "127.0.0.1"),
        )
    assert _reason(caught.value) == "URL_ADDRESS_REFUSED" and "background_image_url" in caught.value.details()
    # Options refused anyway (a background under a transparent format) are refused before any fetch.
    hits = sum(pictures.hits.values())
    with pytest.raises(grpc.RpcError) as caught:
        _remove(
            stub,
            customer,
            pictures.url("/photo.png"),
            format=options_pb2.OUTPUT_FORMAT_PNG,
            background_image_url=pictures.url("/backdrop.png"),
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "background_image" in caught.value.details()
    assert sum(pictures.hits.values()) == hits, "fetched for a request refused anyway"


def test_byte_and_time_limits(mesh: Mesh, customer: Customer, pictures: Pictures, tmp_path: Path):
    env = {
        "CUTOUT_GATEWAY_FETCH_ALLOWED_HOSTS": "localhost",
        "CUTOUT_GATEWAY_FETCH_MAX_BYTES": "100000",
        "CUTOUT_GATEWAY_FETCH_TIMEOUT_S": "1",
    }
    with another_gateway(mesh, tmp_path, env) as gateway, gateway.channel() as channel:
        limited = cutout_pb2_grpc.CutoutStub(channel)
        before = _balance(limited, customer)
        for path, expected in [("/big", "URL_TOO_LARGE"), ("/slow", "URL_FETCH_TIMEOUT")]:
            with pytest.raises(grpc.RpcError) as caught:
                _remove(limited, customer, pictures.url(path))
            assert _reason(caught.value) == expected, path
        assert _balance(limited, customer) == before


def test_through_the_http_edge_with_a_remove_bg_client(
    mesh: Mesh, customer: Customer, pictures: Pictures, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(remove_bg_api, "API_URL", f"{mesh.edge.url}/v1.0")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(mesh.ca_file))
    client = remove_bg_api.RemoveBg(customer.api_key)
    before = client.account.balance()
    cut = decode(client.remove_bg_url(pictures.url("/photo.png"), raw=True, data={"size": "full", "format": "png"}))
    assert cut.mode == "RGBA" and cut.size == (512, 512)
    assert client.account.balance() == before - 1
    answer = requests.post(
        f"{mesh.edge.url}/v1.0/removebg",
        headers={"X-Api-Key": customer.api_key},
        data={"image_url": pictures.url("/x.png", "169.254.169.254"), "size": "full"},
        verify=str(mesh.ca_file),
        timeout=60,
    )
    assert answer.status_code == 400
    assert answer.json()["errors"][0]["code"] == "url_address_refused"
    client.account.refresh_balance()
    assert client.account.balance() == before - 1
