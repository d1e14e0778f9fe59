"""The HTTP edge (issue #29) through the real mesh: a published remove.bg client library
(remove-bg-api on PyPI), unchanged but for its base URL and the CA, cuts the astronaut out
from a file, from base64 and from a URL, with crop, a background colour and channels=alpha,
and reads the credits charged; remove.bg's error shapes and statuses; bodies refused before
they are read; TLS 1.3 only, HTTP/2 by ALPN; Cutout's own API as JSON."""

from __future__ import annotations

import base64
import io
import json
import socket
import ssl
import time
import zipfile
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import remove_bg_api
import requests

from services.launcher import Mesh, edge_process
from tests.conftest import Customer, another_gateway, decode, encode, new_account

ASTRONAUT_BG = (0x81, 0xD4, 0xFA)


@pytest.fixture
def client_env(mesh: Mesh, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The library's one change: its base URL (a module constant), and the cell's CA for requests."""
    monkeypatch.setattr(remove_bg_api, "API_URL", f"{mesh.edge.url}/v1.0")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(mesh.ca_file))
    yield


@pytest.fixture(scope="module")
def customer(mesh: Mesh, raw_channel) -> Customer:
    return new_account(raw_channel, mesh.admin_token, credits=50)


def _balance(mesh: Mesh, api_key: str) -> Decimal:
    answer = requests.get(
        f"{mesh.edge.url}/v1.0/account", headers={"X-Api-Key": api_key}, verify=str(mesh.ca_file), timeout=30
    )
    assert answer.status_code == 200, answer.text
    return Decimal(str(answer.json()["data"]["attributes"]["credits"]["total"]))


def test_a_published_remove_bg_client_cuts_out_from_a_file_and_base64(
    client_env, mesh: Mesh, customer: Customer, astronaut_png: bytes, tmp_path: Path
):
    client = remove_bg_api.RemoveBg(customer.api_key)  # asks GET /v1.0/account at once
    assert client.account.balance() == 50
    photo = tmp_path / "astronaut.png"
    photo.write_bytes(astronaut_png)

    # A file, cropped to the subject, on remove.bg's light blue.
    cropped = client.remove_bg_file(str(photo), raw=True, data={"size": "full", "crop": "true", "bg_color": "81d4fa"})
    image = decode(cropped)
    assert image.mode == "RGB" and image.width * image.height < 512 * 512  # cropped, opaque (JPEG: auto)
    corner = np.asarray(image, np.int16)[2, 2]
    assert np.abs(corner - ASTRONAUT_BG).max() <= 12, corner
    # The library subtracted X-Credits-Charged (1 for a full-size result) from what it had read.
    assert client.account.balance() == 49

    # Base64, the alpha channel alone: remove.bg's greyscale matte, full size.
    b64 = base64.b64encode(astronaut_png).decode()
    matte = decode(client.remove_bg_base64(b64, raw=True, data={"size": "full", "channels": "alpha"}))
    assert matte.mode == "L" and matte.size == (512, 512)
    alpha = np.asarray(matte)
    assert alpha[300, 256] > 200 and alpha[10, 500] < 40  # the suit kept, the wall gone
    assert client.account.balance() == 48
    client.account.refresh_balance()
    assert client.account.balance() == 48 == _balance(mesh, customer.api_key)


def _post(mesh: Mesh, api_key: str | None, **kwargs: object) -> requests.Response:
    headers = dict(kwargs.pop("headers", {}) or {})  # type: ignore[arg-type]
    if api_key is not None:
        headers["X-Api-Key"] = api_key
    return requests.post(
        f"{mesh.edge.url}/v1.0/removebg", headers=headers, verify=str(mesh.ca_file), timeout=60, **kwargs
    )


def test_json_answer_headers_and_zip(mesh: Mesh, customer: Customer, astronaut_png: bytes):
    before = _balance(mesh, customer.api_key)
    answer = _post(
        mesh,
        customer.api_key,
        json={"image_file_b64": base64.b64encode(astronaut_png).decode(), "size": "preview", "type": "person"},
        headers={"Accept": "application/json"},
    )
    assert answer.status_code == 200, answer.text
    data = answer.json()["data"]
    image = decode(base64.b64decode(data["result_b64"]))
    assert image.mode == "RGBA" and image.width * image.height <= 250_000  # a preview
    assert answer.headers["X-Credits-Charged"] == "0.25"
    assert answer.headers["X-Type"] == "person"
    assert 0.5 <= float(answer.headers["X-Confidence"]) <= 1.0
    assert (int(answer.headers["X-Width"]), int(answer.headers["X-Height"])) == image.size
    for side in ("top", "left", "width", "height"):
        assert data[f"foreground_{side}"] == int(answer.headers[f"X-Foreground-{side.capitalize()}"])
    assert data["foreground_width"] > 50 and data["foreground_height"] > 50
    assert _balance(mesh, customer.api_key) == before - Decimal("0.25")

    # format=zip: remove.bg's color.jpg + alpha.png, from Cutout's colour + alpha pair.
    zipped = _post(mesh, customer.api_key, files={"image_file": astronaut_png}, data={"format": "zip"})
    assert zipped.status_code == 200 and zipped.headers["Content-Type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(zipped.content)) as archive:
        assert sorted(archive.namelist()) == ["alpha.png", "color.jpg"]
        assert decode(archive.read("alpha.png")).mode == "L"
        assert decode(archive.read("color.jpg")).format == "JPEG"


def test_remove_bg_errors_in_its_shape_and_statuses(mesh: Mesh, raw_channel, customer: Customer, astronaut_png: bytes):
    def error(answer: requests.Response, status: int) -> dict[str, str]:
        assert answer.status_code == status, answer.text
        (only,) = answer.json()["errors"]
        assert only["title"] and only["detail"]
        return only

    assert error(_post(mesh, None, files={"image_file": astronaut_png}), 403)["code"] == "auth_failed"
    assert error(_post(mesh, "not-a-key", files={"image_file": astronaut_png}), 403)["code"] == "api_key_invalid"
    refused = error(_post(mesh, customer.api_key, files={"image_file": astronaut_png}, data={"size": "hd"}), 400)
    assert "hd" in refused["detail"]
    refused = error(_post(mesh, customer.api_key, files={"image_file": astronaut_png}, data={"colour": "red"}), 400)
    assert "colour" in refused["detail"]  # unknown fields are refused, not ignored
    refused = error(_post(mesh, customer.api_key, data={"image_file_b64": base64.b64encode(b"no image").decode()}), 400)
    assert refused["code"] == "invalid_argument"  # the gateway's own check, passed on
    assert error(_post(mesh, customer.api_key, data={"size": "full"}), 400)["code"] == "missing_source"

    # 402: a balance that does not cover a full-size result (3 credits: three, then the refusal).
    small = new_account(raw_channel, mesh.admin_token, credits=None)
    tiny = encode(decode(astronaut_png).resize((64, 64)), "PNG")
    for _ in range(3):
        assert _post(mesh, small.api_key, files={"image_file": tiny}, data={"size": "full"}).status_code == 200
    assert error(_post(mesh, small.api_key, files={"image_file": tiny}, data={"size": "full"}), 402)["code"] == (
        "insufficient_credits"
    )
    assert _balance(mesh, small.api_key) == 0


def test_rate_limit_is_429_with_retry_after(mesh: Mesh, customer: Customer, astronaut_png: bytes, tmp_path: Path):
    """The gateway's per-key rate (burst 1 here), through an edge of its own: 429, Retry-After."""
    limited = {"CUTOUT_GATEWAY_KEY_RATE_PER_S": "0.2", "CUTOUT_GATEWAY_KEY_RATE_BURST": "1"}
    with another_gateway(mesh, tmp_path, limited) as gateway:
        edge = edge_process(tmp_path, {}, gateway=gateway.address, pki=mesh.pki)
        edge.start()
        try:
            edge.wait_serving()
            url = f"{edge.url}/v1.0/account"
            headers = {"X-Api-Key": customer.api_key}
            first = requests.get(url, headers=headers, verify=str(mesh.ca_file), timeout=30)
            second = requests.get(url, headers=headers, verify=str(mesh.ca_file), timeout=30)
        finally:
            assert edge.stop() == 0
    assert first.status_code == 200, first.text
    assert second.status_code == 429, second.text
    assert second.json()["errors"][0]["code"] == "rate_limited"
    assert 1 <= int(second.headers["Retry-After"]) <= 10
    assert second.headers["X-RateLimit-Remaining"] == "0"


def _tls_socket(mesh: Mesh, **context_settings: object) -> ssl.SSLSocket:
    address = urlsplit(mesh.edge.url)
    context = ssl.create_default_context(cafile=str(mesh.ca_file))
    for name, value in context_settings.items():
        setattr(context, name, value)
    raw = socket.create_connection((address.hostname, address.port), timeout=30)
    return context.wrap_socket(raw, server_hostname=address.hostname)


def _read_answer(tls: ssl.SSLSocket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = tls.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.parametrize("api_key", [None, "some-key"])
def test_a_100_mb_body_is_refused_before_it_is_read(mesh: Mesh, api_key: str | None):
    """Only the headers are sent: the answer comes before a byte of the body (403 without a
    key, 413 over the limit with one), and the connection is closed."""
    with _tls_socket(mesh) as tls:
        key = f"X-Api-Key: {api_key}\r\n" if api_key else ""
        tls.sendall(
            (
                f"POST /v1.0/removebg HTTP/1.1\r\nHost: localhost\r\n{key}"
                "Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 104857600\r\n\r\n"
            ).encode()
        )
        head = _read_answer(tls)
    status = int(head.split(b" ", 2)[1])
    assert status == (413 if api_key else 403), head
    assert b"connection: close" in head.lower()


def test_a_chunked_body_is_refused_as_it_passes_the_limit(mesh: Mesh, customer: Customer, tmp_path: Path):
    """No Content-Length to refuse from: the edge counts while reading (its limit 4 KiB here)."""
    edge = edge_process(tmp_path, {"CUTOUT_EDGE_MAX_BODY_BYTES": "4096"}, gateway=mesh.gateway.address, pki=mesh.pki)
    edge.start()
    try:
        edge.wait_serving()

        def chunks() -> Iterator[bytes]:
            for _ in range(64):  # 64 KiB in all, without a declared length
                yield b"x" * 1024

        answer = requests.post(
            f"{edge.url}/v1.0/removebg",
            headers={"X-Api-Key": customer.api_key, "Content-Type": "application/x-www-form-urlencoded"},
            data=chunks(),
            verify=str(mesh.ca_file),
            timeout=30,
        )
        assert answer.status_code == 413, answer.text
        assert answer.json()["errors"][0]["code"] == "file_too_large"
        small = requests.post(
            f"{edge.url}/v1.0/removebg",
            headers={"X-Api-Key": customer.api_key},
            data={"size": "hd", "image_file_b64": "AAAA"},
            verify=str(mesh.ca_file),
            timeout=30,
        )
        assert small.status_code == 400  # under the limit: read, parsed, refused for its size option
    finally:
        assert edge.stop() == 0


def test_a_renewed_certificate_is_served_without_a_restart(mesh: Mesh, tmp_path: Path):
    assert mesh.pki is not None
    cert, key = tmp_path / "edge.pem", tmp_path / "edge-key.pem"

    def renew() -> bytes:
        identity = mesh.pki.issue("edge-renewal")
        key.write_bytes(identity.key_file.read_bytes())
        cert.write_bytes(identity.cert_file.read_bytes())
        return ssl.PEM_cert_to_DER_cert(identity.cert_file.read_text())

    first = renew()
    env = {"CUTOUT_EDGE_TLS_CERT_FILE": str(cert), "CUTOUT_EDGE_TLS_KEY_FILE": str(key)}
    edge = edge_process(tmp_path, env, gateway=mesh.gateway.address, pki=mesh.pki)
    edge.start()
    try:
        edge.wait_serving()
        context = ssl.create_default_context(cafile=str(mesh.ca_file))

        def served() -> bytes:
            with (
                socket.create_connection(("127.0.0.1", edge.port), timeout=10) as raw,
                context.wrap_socket(raw, server_hostname="localhost") as tls,
            ):
                return tls.getpeercert(binary_form=True) or b""

        assert served() == first
        second = renew()
        deadline = time.monotonic() + 15
        while served() != second and time.monotonic() < deadline:
            time.sleep(0.2)
        assert served() == second
    finally:
        assert edge.stop() == 0


def test_tls_1_3_only_and_http2_by_alpn(mesh: Mesh):
    with pytest.raises(ssl.SSLError):
        _tls_socket(mesh, maximum_version=ssl.TLSVersion.TLSv1_2).close()
    context_alpn = ssl.create_default_context(cafile=str(mesh.ca_file))
    context_alpn.set_alpn_protocols(["h2", "http/1.1"])
    address = urlsplit(mesh.edge.url)
    with (
        socket.create_connection((address.hostname, address.port), timeout=30) as raw,
        context_alpn.wrap_socket(raw, server_hostname=address.hostname) as tls,
    ):
        assert tls.version() == "TLSv1.3"
        assert tls.selected_alpn_protocol() == "h2"


def test_cutout_api_as_json(mesh: Mesh, customer: Customer, astronaut_png: bytes):
    def call(method: str, body: dict[str, object], key: str | None = customer.api_key) -> requests.Response:
        headers = {"X-Api-Key": key} if key else {}
        return requests.post(
            f"{mesh.edge.url}/v1/{method}", json=body, headers=headers, verify=str(mesh.ca_file), timeout=60
        )

    balance = call("GetBalance", {})
    assert balance.status_code == 200 and Decimal(balance.json()["availableDecimal"]) > 0
    removed = call(
        "RemoveBackground",
        {"image": base64.b64encode(astronaut_png).decode(), "options": {"format": "OUTPUT_FORMAT_MASK"}},
    )
    assert removed.status_code == 200, removed.text
    result = removed.json()["result"]
    assert decode(base64.b64decode(result["image"])).mode == "L" and result["width"] == 512
    assert removed.json()["creditsChargedDecimal"] == "1"
    bad = call("RemoveBackground", {"image": base64.b64encode(b"nope").decode()})
    assert bad.status_code == 400 and bad.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert any(d.get("reason") for d in bad.json()["error"]["details"])
    assert call("GetBalance", {}, key=None).status_code == 403
    assert call("SignUp", {}).status_code == 404  # keyless calls stay on gRPC (per-source limits)
    assert call("NoSuchMethod", {}).status_code == 404
    document = requests.get(f"{mesh.edge.url}/openapi.json", verify=str(mesh.ca_file), timeout=30).json()
    assert "/v1.0/removebg" in document["paths"] and "/v1/RemoveBackground" in document["paths"]
    json.dumps(document)
