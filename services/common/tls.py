"""TLS for every listener and channel of the mesh, in one place.

- The gateway's public port serves TLS from a certificate and key file, re-read when
  either file changes (a renewed certificate is served on the next connection, no restart).
- Channels inside the cell present this service's certificate, also re-read when its files
  change (`ReloadingChannel`: the next call goes out with the new certificate).
- Inside the cell, every service also demands a client certificate from the cell's CA
  (mutual TLS) and knows who calls from the certificate's common name: `caller_name`.
- `CellPki` makes the cell CA and one certificate per service (the embedded mesh; on
  Kubernetes cert-manager issues the same shapes from the cell's Issuer).

Only TLS 1.3 is spoken: grpcio has no minimum-version setting for servers (grpc core
has one, `grpc.ssl_server_credentials` does not expose it as of grpcio 1.85:
grpc/grpc#37305, #43080), so `services/__init__.py` leaves TLS 1.2 without a usable
cipher through grpc's GRPC_SSL_CIPHER_SUITES, before grpc is imported.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Defined with the client (cutout/transport.py); the services' channels use them too.
from cutout.transport import channel_credentials as channel_credentials
from cutout.transport import is_loopback as is_loopback
from services.common.tasks import start_kept

log = logging.getLogger(__name__)

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")


# --- listeners -------------------------------------------------------------------


def check_pair(cert: bytes, key: bytes) -> None:
    """ValueError unless the PEM certificate is the key's. A rotation writes two files:
    between them the pair does not match, and using it would fail every handshake, so such
    a pair is refused (and the previous one kept)."""
    public = serialization.load_pem_private_key(key, password=None).public_key()
    if x509.load_pem_x509_certificate(cert).public_key() != public:
        raise ValueError("the certificate does not match the key")


def _stamp(files: Sequence[Path]) -> tuple[tuple[int, int, int], ...]:
    """What tells that a file changed: its mtime, inode (an atomic swap, as the kubelet
    makes, is a new inode) and size."""
    stats = [os.stat(path) for path in files]
    return tuple((stat.st_mtime_ns, stat.st_ino, stat.st_size) for stat in stats)


class _ReloadingCertificate:
    """The server certificate configuration, read again whenever a file's mtime changes.

    grpc calls `fetch` on every new connection's handshake; it returns None (keep the
    current configuration) unless a file changed since the last read.
    """

    def __init__(self, cert_file: Path, key_file: Path, client_ca_file: Path | None) -> None:
        self.files = [p for p in (cert_file, key_file, client_ca_file) if p is not None]
        self.cert_file, self.key_file, self.client_ca_file = cert_file, key_file, client_ca_file
        self._stamp = self._mtimes()
        self.current = self._read()

    def _mtimes(self) -> tuple[tuple[int, int, int], ...]:
        return _stamp(self.files)

    def _read(self) -> grpc.ServerCertificateConfiguration:
        key, cert = self.key_file.read_bytes(), self.cert_file.read_bytes()
        check_pair(cert, key)
        return grpc.ssl_server_certificate_configuration(
            [(key, cert)],
            root_certificates=self.client_ca_file.read_bytes() if self.client_ca_file else None,
        )

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        try:
            stamp = self._mtimes()
            if stamp == self._stamp:
                return None
            self.current = self._read()
            self._stamp = stamp
        except (OSError, ValueError) as error:  # half-written during a rotation: keep serving the old one
            log.warning("certificate reload failed (%s); still serving the previous one", type(error).__name__)
            return None
        log.info("certificate reloaded from %s", self.cert_file)
        return self.current


def server_credentials(cert_file: Path, key_file: Path, client_ca_file: Path | None = None) -> grpc.ServerCredentials:
    """TLS from files, reloaded when they change; with `client_ca_file`, callers must
    present a certificate that CA signed (mutual TLS), else the handshake fails."""
    reloading = _ReloadingCertificate(cert_file, key_file, client_ca_file)
    return grpc.dynamic_ssl_server_credentials(
        reloading.current, reloading.fetch, require_client_authentication=client_ca_file is not None
    )


def caller_name(context: grpc.aio.ServicerContext) -> str:
    """The common name of the caller's certificate ("" without mutual TLS)."""
    names = (context.auth_context() or {}).get("x509_common_name") or [b""]
    name = names[0]
    return name.decode() if isinstance(name, bytes) else str(name)


class CallerCheck(grpc.aio.ServerInterceptor):
    """Lets only the named services call `guarded` gRPC services (health and reflection
    stay open to any holder of a cell certificate, e.g. a probe)."""

    def __init__(self, guarded: Sequence[str], allowed: Sequence[str]) -> None:
        self.guarded = tuple(f"/{name}/" for name in guarded)
        self.allowed = frozenset(allowed)

    async def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        handler = await continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(self.guarded):
            return handler
        allowed = self.allowed

        async def refuse(context: grpc.aio.ServicerContext) -> None:
            from services.common.errors import ServiceError, abort

            name = caller_name(context)
            log.warning("refused %s from %r (not an allowed caller)", handler_call_details.method, name)
            await abort(
                context,
                ServiceError(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"this service answers only {', '.join(sorted(allowed))}; the caller's certificate names "
                    f"{name or 'nobody'}",
                    reason="CALLER_NOT_ALLOWED",
                ),
            )

        def permitted(context: grpc.aio.ServicerContext) -> bool:
            return caller_name(context) in allowed

        if handler.unary_unary:
            inner_uu = handler.unary_unary

            async def unary_unary(request, context):  # type: ignore[no-untyped-def]
                if not permitted(context):
                    await refuse(context)
                return await inner_uu(request, context)

            return handler._replace(unary_unary=unary_unary)
        if handler.stream_unary:
            inner_su = handler.stream_unary

            async def stream_unary(requests, context):  # type: ignore[no-untyped-def]
                if not permitted(context):
                    await refuse(context)
                return await inner_su(requests, context)

            return handler._replace(stream_unary=stream_unary)
        if handler.unary_stream:
            inner_us = handler.unary_stream

            async def unary_stream(request, context):  # type: ignore[no-untyped-def]
                if not permitted(context):
                    await refuse(context)
                async for item in inner_us(request, context):
                    yield item

            return handler._replace(unary_stream=unary_stream)
        inner_ss = handler.stream_stream

        async def stream_stream(requests, context):  # type: ignore[no-untyped-def]
            if not permitted(context):
                await refuse(context)
            async for item in inner_ss(requests, context):
                yield item

        return handler._replace(stream_stream=stream_stream)


# --- channels --------------------------------------------------------------------


class ReloadingChannel:
    """A mutual-TLS client channel whose certificate follows its files, as the listeners do.

    grpcio has no dynamic credentials for channels, so this stands in for a
    `grpc.aio.Channel`: stubs are made on it as usual, and every call first checks the
    files (three stat calls) and, if they changed and the new certificate matches its key,
    opens a new channel with them. That call and every later one present the new
    certificate; the old channel is closed once its calls in flight have had
    `retire_grace_s` to finish. A half-rotated or unreadable pair keeps the current channel.
    """

    def __init__(
        self,
        target: str,
        ca_file: Path,
        cert_file: Path,
        key_file: Path,
        options: Sequence[tuple[str, Any]] = (),
        retire_grace_s: float = 300.0,
    ) -> None:
        self.target = target
        self.files = (ca_file, cert_file, key_file)
        self.options = list(options)
        self.retire_grace_s = retire_grace_s
        self._stamp = _stamp(self.files)
        self._channel = self._open()
        self._retiring: set[asyncio.Task[None]] = set()

    def _open(self) -> grpc.aio.Channel:
        ca, cert, key = (path.read_bytes() for path in self.files)
        check_pair(cert, key)
        credentials = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
        # Looked up on the module at each call, so OpenTelemetry's patched constructor is used.
        return grpc.aio.secure_channel(self.target, credentials, options=self.options)

    def current(self) -> grpc.aio.Channel:
        """The channel for the next call, opened anew if the certificate files changed."""
        try:
            stamp = _stamp(self.files)
            if stamp == self._stamp:
                return self._channel
            fresh = self._open()
        except (OSError, ValueError) as error:  # mid-rotation: keep the current one, look again next call
            log.warning("client certificate reload failed (%s); still using the previous one", type(error).__name__)
            return self._channel
        retired, self._channel, self._stamp = self._channel, fresh, stamp
        start_kept(self._retiring, _retire(retired, self.retire_grace_s))
        log.info("client certificate reloaded from %s for %s", self.files[1], self.target)
        return fresh

    def unary_unary(self, method: str, **kwargs: Any) -> _Dispatch:
        return _Dispatch(self, "unary_unary", method, kwargs)

    def unary_stream(self, method: str, **kwargs: Any) -> _Dispatch:
        return _Dispatch(self, "unary_stream", method, kwargs)

    def stream_unary(self, method: str, **kwargs: Any) -> _Dispatch:
        return _Dispatch(self, "stream_unary", method, kwargs)

    def stream_stream(self, method: str, **kwargs: Any) -> _Dispatch:
        return _Dispatch(self, "stream_stream", method, kwargs)

    async def close(self, grace: float | None = None) -> None:
        retiring = list(self._retiring)
        for task in retiring:  # channels already replaced: closed now, their calls cancelled
            task.cancel()
        await asyncio.gather(*retiring, return_exceptions=True)
        await self._channel.close(grace)

    def __getattr__(self, name: str) -> Any:  # get_state, channel_ready, ...: the current channel's
        return getattr(self.current(), name)


async def _retire(channel: grpc.aio.Channel, grace_s: float) -> None:
    try:
        await channel.close(grace_s)
    except asyncio.CancelledError:
        await channel.close(None)
        raise


class _Dispatch:
    """A multi-callable of a ReloadingChannel: each call goes to the channel current then."""

    def __init__(self, owner: ReloadingChannel, kind: str, method: str, kwargs: dict[str, Any]) -> None:
        self.owner, self.kind, self.method, self.kwargs = owner, kind, method, kwargs
        self._made: tuple[grpc.aio.Channel | None, Any] = (None, None)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        channel = self.owner.current()
        made_on, made = self._made
        if made_on is not channel:
            made = getattr(channel, self.kind)(self.method, **self.kwargs)
            self._made = (channel, made)
        return made(*args, **kwargs)


# --- the cell's CA and certificates (embedded mesh) ------------------------------


def _write_private(path: Path, data: bytes) -> None:
    """Owner-only from the start (never briefly world-readable), replaced atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass(frozen=True)
class Identity:
    """One service's certificate, key and the CA that vouches for it, as files."""

    name: str
    cert_file: Path
    key_file: Path
    ca_file: Path

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return channel_credentials(self.ca_file, self.cert_file, self.key_file)


class CellPki:
    """A cell's CA (made once, kept under `folder`) and the certificates it issues.

    Keys are EC P-256, written 0600; a certificate names its service in the common
    name and as a DNS name, plus localhost and 127.0.0.1 for the embedded mesh.
    """

    def __init__(self, folder: Path, cell: str = "local", valid_days: int = 90) -> None:
        self.folder = folder
        self.cell = cell
        self.valid_days = valid_days
        self.ca_file = folder / "ca.pem"
        self._ca_key_file = folder / "ca-key.pem"
        if not (self.ca_file.exists() and self._ca_key_file.exists()):
            self._make_ca()

    def _make_ca(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"cutout {self.cell} cell CA")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )  # keyCertSign, cRLSign
            .sign(key, hashes.SHA256())
        )
        _write_private(self._ca_key_file, _key_pem(key))
        self.folder.mkdir(parents=True, exist_ok=True)
        self.ca_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, name: str, extra_names: Sequence[str] = ()) -> Identity:
        """A new certificate for service `name` (replacing any earlier one, atomically)."""
        ca_key = serialization.load_pem_private_key(self._ca_key_file.read_bytes(), password=None)
        ca_cert = x509.load_pem_x509_certificate(self.ca_file.read_bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        alt: list[x509.GeneralName] = [x509.DNSName(n) for n in (name, "localhost", *extra_names)]
        alt += [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(ipaddress.ip_address("::1"))]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=self.valid_days))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
        )
        identity = self.identity(name)
        # Key first: a listener reloading between the two writes sees a mismatched pair,
        # fails to load it and keeps the previous one until the certificate lands too.
        _write_private(identity.key_file, _key_pem(key))
        tmp = identity.cert_file.with_name(f".{identity.cert_file.name}.tmp")
        tmp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        os.replace(tmp, identity.cert_file)
        return identity

    def identity(self, name: str) -> Identity:
        return Identity(name, self.folder / f"{name}.pem", self.folder / f"{name}-key.pem", self.ca_file)

    def ensure(self, name: str) -> Identity:
        """The certificate for `name`, issued now if missing."""
        identity = self.identity(name)
        return identity if identity.cert_file.exists() and identity.key_file.exists() else self.issue(name)
