"""services/gateway/fetch.py's address rules, with a fake resolver (the real path is
tests/mesh/test_url_fetch.py)."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Sequence

import pytest

from services.common.errors import ServiceError
from services.gateway.fetch import FetchRules, fetch, internal_kind

RULES = FetchRules(frozenset({"allowed.example"}), max_bytes=1000, timeout_s=2, max_redirects=2)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.8.9.10",
        "::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "100.64.0.1",  # carrier-grade NAT
        "169.254.169.254",
        "fe80::1",
        "fd00:ec2::254",  # AWS's IPv6 metadata address
        "224.0.0.1",
        "ff02::1",
        "0.0.0.0",
        "::",
        "240.0.0.1",
    ],
)
def test_internal_addresses(address: str):
    assert internal_kind(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c", "::ffff:8.8.8.8"])
def test_global_addresses(address: str):
    assert internal_kind(ipaddress.ip_address(address)) is None


def _resolver(answers: dict[str, Sequence[str]], asked: list[str]):
    async def resolve(host: str, port: int) -> Sequence[str]:
        asked.append(host)
        return answers[host]

    return resolve


def _refusal(url: str, answers: dict[str, Sequence[str]]) -> tuple[str, list[str]]:
    asked: list[str] = []
    with pytest.raises(ServiceError) as caught:
        asyncio.run(fetch(url, RULES, "image_url", _resolver(answers, asked)))
    return caught.value.reason or "", asked


def test_one_internal_answer_among_public_ones_refuses_the_name():
    reason, asked = _refusal("http://mixed.example/a.png", {"mixed.example": ["93.184.215.14", "10.0.0.7"]})
    assert reason == "URL_ADDRESS_REFUSED" and asked == ["mixed.example"]


def test_an_allowed_name_may_resolve_inside_but_its_address_literal_may_not():
    # Allowed by name: resolved to loopback, then the connection fails (nothing listens on port 9).
    reason, _ = _refusal("http://allowed.example:9/a.png", {"allowed.example": ["127.0.0.1"]})
    assert reason == "URL_FETCH_FAILED"
    assert _refusal("http://127.0.0.1:9/a.png", {})[0] == "URL_ADDRESS_REFUSED"


def test_schemes_and_credentials():
    assert _refusal("gopher://allowed.example/", {})[0] == "URL_SCHEME_REFUSED"
    assert _refusal("http://a:b@allowed.example/", {})[0] == "URL_CREDENTIALS_REFUSED"
    assert _refusal("http://[::1/", {})[0] == "URL_INVALID"
