"""Fetching a picture from a caller's URL (image_url, background_image_url), safe by construction.

Server-side request forgery is the risk: a URL that makes the gateway reach what only the
cell can reach (the metadata service at 169.254.169.254, accounts' admin port, a database).
So every hop of a fetch:

- takes http or https only, and no credentials in the URL;
- resolves the name once, and refuses it if any address it resolves to is loopback,
  private, link-local, multicast, reserved, unspecified or otherwise not global (IPv4, IPv6,
  and IPv4 inside IPv6: mapped, NAT64, 6to4), unless the host is allowed by name
  (settings.fetch_allowed_hosts);
- connects to the addresses it checked (the first that answers), never resolving again (a
  second answer from DNS could differ), presenting the name for TLS and the Host header;
- follows at most fetch_max_redirects redirects, each checked as a new URL.

The body is read into memory up to fetch_max_bytes (a larger Content-Length is refused
before reading, a longer body while reading), the whole fetch within fetch_timeout_s.
Nothing is written to disk; the URL and the bytes are never logged or put in a span; a
refusal is INVALID_ARGUMENT with an ErrorInfo reason naming the rule, raised before any
credit is reserved, so a failed fetch is charged nothing.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import grpc
import h11

from services.common.errors import ServiceError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_READ_BYTES = 64 * 1024
USER_AGENT = "Cutout-fetch/1"


@dataclass(frozen=True)
class FetchRules:
    allowed_hosts: frozenset[str]
    max_bytes: int
    timeout_s: float
    max_redirects: int
    ca_file: Path | None = None


def url_refused(field: str, reason: str, message: str) -> ServiceError:
    # The message names the rule and never the URL, its host or the address (they are the
    # caller's, and errors reach logs and spans): the caller knows which URL it sent.
    return ServiceError(
        grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {message}; nothing was charged", reason=reason, field=field
    )


def internal_kind(address: IPAddress) -> str | None:
    """Why an address is refused ("loopback", "private", ...), or None when it is global."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return internal_kind(embedded)
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local (cloud metadata lives here)"
    if address.is_multicast:
        return "multicast"
    if address.is_unspecified:
        return "unspecified"
    if address.is_private:
        return "private"
    if address.is_reserved:
        return "reserved"
    if not address.is_global:
        return "not globally routable"
    return None


async def system_resolver(host: str, port: int) -> Sequence[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str  # as in the URL (a name, or an address without brackets)
    port: int
    path: str  # path and query, as sent on the request line


def _parse(url: str, field: str) -> _Target:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise url_refused(field, "URL_INVALID", "not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise url_refused(field, "URL_SCHEME_REFUSED", "only http and https URLs are fetched")
    if parts.username is not None or parts.password is not None:
        raise url_refused(field, "URL_CREDENTIALS_REFUSED", "URLs with a user name or password are not fetched")
    host = (parts.hostname or "").lower()
    if not host:
        raise url_refused(field, "URL_INVALID", "the URL has no host")
    path = parts.path or "/"
    if parts.query:
        path += f"?{parts.query}"
    return _Target(scheme, host, port or (443 if scheme == "https" else 80), path)


async def _addresses(target: _Target, rules: FetchRules, resolve: Resolver, field: str) -> list[str]:
    """The addresses this hop may connect to (in the resolver's order), after the checks."""
    try:
        literal: IPAddress | None = ipaddress.ip_address(target.host)
    except ValueError:
        literal = None
    if literal is not None:
        candidates = [literal]
    else:
        try:
            found = await resolve(target.host, target.port)
        except (OSError, UnicodeError):
            raise url_refused(field, "URL_HOST_NOT_FOUND", "the URL's host name does not resolve") from None
        candidates = [ipaddress.ip_address(address.split("%", 1)[0]) for address in found]
        if not candidates:
            raise url_refused(field, "URL_HOST_NOT_FOUND", "the URL's host name does not resolve")
    if literal is None and target.host.rstrip(".") in rules.allowed_hosts:
        return [str(candidate) for candidate in candidates]
    for candidate in candidates:  # every answer: DNS must not be able to pick the internal one
        kind = internal_kind(candidate)
        if kind is not None:
            raise url_refused(
                field,
                "URL_ADDRESS_REFUSED",
                f"the URL's host is (or resolves to) a {kind} address, which is not fetched",
            )
    return [str(candidate) for candidate in candidates]


def _tls_context(rules: FetchRules) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if rules.ca_file is not None:
        context.load_verify_locations(cafile=str(rules.ca_file))
    return context


async def _connect(
    target: _Target, addresses: list[str], rules: FetchRules, field: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to the first of the checked addresses that answers (a name may resolve to
    ::1 and 127.0.0.1 while its server listens on one of them)."""
    tls = _tls_context(rules) if target.scheme == "https" else None
    for address in addresses:
        try:
            return await asyncio.open_connection(
                address, target.port, ssl=tls, server_hostname=target.host if tls else None
            )
        except ssl.SSLError:
            raise url_refused(field, "URL_FETCH_FAILED", "the URL's TLS certificate could not be verified") from None
        except OSError:
            continue
    raise url_refused(field, "URL_FETCH_FAILED", "the URL's server could not be reached")


async def _get(target: _Target, addresses: list[str], rules: FetchRules, field: str) -> tuple[int, str | None, bytes]:
    """One GET to the checked addresses: (status, Location if a redirect, body if 200)."""
    reader, writer = await _connect(target, addresses, rules, field)
    connection = h11.Connection(h11.CLIENT, max_incomplete_event_size=64 * 1024)
    default_port = 443 if target.scheme == "https" else 80
    host_header = target.host if target.port == default_port else f"{target.host}:{target.port}"
    if ":" in target.host:  # an IPv6 literal
        host_header = f"[{target.host}]" if target.port == default_port else f"[{target.host}]:{target.port}"
    try:
        writer.write(
            connection.send(
                h11.Request(
                    method="GET",
                    target=target.path,
                    headers=[
                        ("Host", host_header),
                        ("User-Agent", USER_AGENT),
                        ("Accept", "image/*"),
                        ("Connection", "close"),
                    ],
                )
            )
            or b""
        )
        writer.write(connection.send(h11.EndOfMessage()) or b"")
        await writer.drain()
        status, location, body = 0, None, bytearray()
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(_READ_BYTES)
                connection.receive_data(data)
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
                headers = {name.lower(): value for name, value in event.headers}
                if 300 <= status < 400:
                    location = headers.get(b"location", b"").decode("latin-1") or None
                    return status, location, b""
                if status != 200:
                    raise url_refused(field, "URL_FETCH_FAILED", f"the URL's server answered HTTP {status}")
                length = headers.get(b"content-length")
                if length is not None and length.isdigit() and int(length) > rules.max_bytes:
                    raise _too_large(field, rules)
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > rules.max_bytes:
                    raise _too_large(field, rules)
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return status, location, bytes(body)
    except h11.RemoteProtocolError:
        raise url_refused(field, "URL_FETCH_FAILED", "the URL's server did not answer in HTTP/1.1") from None
    except (OSError, ssl.SSLError):
        raise url_refused(field, "URL_FETCH_FAILED", "the connection to the URL's server broke") from None
    finally:
        writer.close()


def _too_large(field: str, rules: FetchRules) -> ServiceError:
    return url_refused(
        field, "URL_TOO_LARGE", f"the picture at the URL is larger than {rules.max_bytes / 2**20:.0f} MiB"
    )


async def fetch(url: str, rules: FetchRules, field: str, resolve: Resolver = system_resolver) -> bytes:
    """The bytes at `url`, or a ServiceError (INVALID_ARGUMENT, reason URL_*) saying which rule refused."""

    async def follow() -> bytes:
        current = url
        for _ in range(rules.max_redirects + 1):
            target = _parse(current, field)
            addresses = await _addresses(target, rules, resolve, field)
            status, location, body = await _get(target, addresses, rules, field)
            if location is None and 300 <= status < 400:
                raise url_refused(
                    field, "URL_FETCH_FAILED", f"the URL's server answered HTTP {status} without a Location"
                )
            if location is None:
                if not body:
                    raise url_refused(field, "URL_FETCH_FAILED", "the URL's server answered with an empty body")
                return body
            current = urljoin(current, location)
        raise url_refused(field, "URL_TOO_MANY_REDIRECTS", f"more than {rules.max_redirects} redirects")

    try:
        async with asyncio.timeout(rules.timeout_s):
            return await follow()
    except TimeoutError:
        raise url_refused(field, "URL_FETCH_TIMEOUT", f"the fetch took longer than {rules.timeout_s:g} s") from None
