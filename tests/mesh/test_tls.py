"""TLS 1.3 at the edge, mutual TLS inside, through the real mesh.

The session's mesh runs with the cell's CA and one certificate per service (services/launcher.py).
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cutout.client import CutoutClient
from cutout.v1 import accounts_pb2, accounts_pb2_grpc, retention_pb2, retention_pb2_grpc
from services.common.channels import channel_options
from services.common.tls import CellPki
from services.launcher import Mesh, ServiceProcess, free_port


def openssl_handshake(address: str, version: str, ca_file: Path) -> tuple[int, str]:
    """`openssl s_client -tls1_3|-tls1_2` against `address`: its exit status and the protocol it reports."""
    done = subprocess.run(
        ["openssl", "s_client", "-connect", address, f"-{version}", "-alpn", "h2", "-CAfile", str(ca_file)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
    )
    out = done.stdout.decode(errors="replace")
    protocol = next((line.split(":", 1)[1].strip() for line in out.splitlines() if "Protocol  :" in line), "")
    cipher = next((line for line in out.splitlines() if line.startswith("New,")), "")
    return done.returncode, f"{protocol} {cipher}"


def test_openssl_completes_a_tls13_handshake_with_the_gateway_and_tls12_is_refused(mesh: Mesh):
    status, seen = openssl_handshake(mesh.gateway.address, "tls1_3", mesh.ca_file)
    assert status == 0 and "TLSv1.3" in seen and "Cipher is (NONE)" not in seen, seen
    status, seen = openssl_handshake(mesh.gateway.address, "tls1_2", mesh.ca_file)
    assert status != 0 and "Cipher is (NONE)" in seen, seen


def test_internal_services_refuse_tls12_too(mesh: Mesh):
    for service in (mesh.accounts, mesh.retention, mesh.inference):
        status, seen = openssl_handshake(service.address, "tls1_2", mesh.ca_file)
        assert status != 0 and "Cipher is (NONE)" in seen, (service.name, seen)


def health(channel: grpc.Channel) -> int:
    return (
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="liveness"), timeout=5).status
    )


def test_plaintext_to_any_port_of_the_mesh_fails(mesh: Mesh):
    assert mesh.triton is not None
    for name, address in [(service.name, service.address) for service in mesh.services] + [("triton", mesh.triton.url)]:
        with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError) as caught:
            health(channel)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, name


def test_triton_answers_only_cell_certificates_over_tls13(mesh: Mesh, tmp_path):
    assert mesh.triton is not None
    client = mesh.triton.client()
    try:
        assert client.is_server_ready()
    finally:
        client.close()
    stranger = CellPki(tmp_path / "other-cell").issue("inference")
    credentials = grpc.ssl_channel_credentials(
        mesh.ca_file.read_bytes(), stranger.key_file.read_bytes(), stranger.cert_file.read_bytes()
    )
    with grpc.secure_channel(mesh.triton.url, credentials) as channel, pytest.raises(grpc.RpcError) as caught:
        health(channel)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    status, seen = openssl_handshake(mesh.triton.url, "tls1_2", mesh.ca_file)
    assert status != 0 and "Cipher is (NONE)" in seen, seen


def test_internal_services_refuse_callers_without_a_certificate(mesh: Mesh):
    """TLS that trusts the cell but presents no certificate: the handshake fails."""
    for service in (mesh.accounts, mesh.retention, mesh.inference):
        credentials = grpc.ssl_channel_credentials(mesh.ca_file.read_bytes())
        with grpc.secure_channel(service.address, credentials) as channel, pytest.raises(grpc.RpcError) as caught:
            health(channel)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, service.name


def test_a_certificate_from_another_ca_is_refused_by_accounts_and_retention(mesh: Mesh, tmp_path):
    # Named "gateway", trusting the cell's CA: only the issuer differs.
    stranger = CellPki(tmp_path / "other-cell").issue("gateway")
    credentials = grpc.ssl_channel_credentials(
        mesh.ca_file.read_bytes(), stranger.key_file.read_bytes(), stranger.cert_file.read_bytes()
    )
    for service in (mesh.accounts, mesh.retention):
        with grpc.secure_channel(service.address, credentials) as channel, pytest.raises(grpc.RpcError) as caught:
            accounts_pb2_grpc.AccountsStub(channel).Authenticate(
                accounts_pb2.AuthenticateRequest(api_key="x"), timeout=5
            )
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, service.name


def test_only_the_gateway_reserves_commits_and_stores(mesh: Mesh, funded_account):
    """A cell certificate with another name (here inference's) reaches health, not the RPCs."""
    with mesh.accounts.channel(as_name="inference") as channel:
        assert health(channel) == health_pb2.HealthCheckResponse.SERVING
        accounts = accounts_pb2_grpc.AccountsStub(channel)
        for call, request in (
            (accounts.Reserve, accounts_pb2.ReserveRequest(account_id=funded_account.account_id, amount=1)),
            (accounts.Commit, accounts_pb2.CommitRequest(account_id=funded_account.account_id)),
            (accounts.Authenticate, accounts_pb2.AuthenticateRequest(api_key=funded_account.api_key)),
        ):
            with pytest.raises(grpc.RpcError) as caught:
                call(request, timeout=10)
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "answers only gateway" in caught.value.details() and "names inference" in caught.value.details()
    with mesh.retention.channel(as_name="mesh") as channel:
        with pytest.raises(grpc.RpcError) as caught:
            retention_pb2_grpc.RetentionStub(channel).ListOwned(
                retention_pb2.ListOwnedRequest(account_id=funded_account.account_id), timeout=10
            )
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # The gateway's certificate works.
    with mesh.accounts.channel(as_name="gateway") as channel:
        caller = accounts_pb2_grpc.AccountsStub(channel).Authenticate(
            accounts_pb2.AuthenticateRequest(api_key=funded_account.api_key), timeout=10
        )
        assert caller.account_id == funded_account.account_id
    with mesh.retention.channel(as_name="gateway") as channel:
        retention_pb2_grpc.RetentionStub(channel).ListOwned(
            retention_pb2.ListOwnedRequest(account_id=funded_account.account_id), timeout=10
        )


def test_keys_are_owner_only(mesh: Mesh):
    keys = sorted((mesh.data_dir / "pki").glob("*key.pem"))
    assert {path.name for path in keys} >= {"ca-key.pem", "gateway-key.pem", "accounts-key.pem"}
    for path in keys:
        assert path.stat().st_mode & 0o777 == 0o600, path


def served_certificate(address: str, ca_file: Path) -> x509.Certificate:
    context = ssl.create_default_context(cafile=str(ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.set_alpn_protocols(["h2"])
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


def test_a_renewed_gateway_certificate_is_served_without_a_restart(tmp_path):
    """A gateway of its own (nothing behind it is needed for a handshake)."""
    pki = CellPki(tmp_path / "pki")
    dead = f"127.0.0.1:{free_port()}"
    env = {f"CUTOUT_GATEWAY_{name}_TARGET": dead for name in ("INFERENCE", "ACCOUNTS", "RETENTION")}
    gateway = ServiceProcess("gateway", env, tmp_path, pki=pki)
    gateway.start()
    try:
        first = served_certificate(gateway.address, pki.ca_file)
        assert first == x509.load_pem_x509_certificate(pki.identity("gateway").cert_file.read_bytes())
        renewed = pki.issue("gateway")
        new = x509.load_pem_x509_certificate(renewed.cert_file.read_bytes())
        deadline = time.monotonic() + 10
        while (served := served_certificate(gateway.address, pki.ca_file)) != new and time.monotonic() < deadline:
            time.sleep(0.2)
        assert served.serial_number == new.serial_number != first.serial_number
        assert gateway.process is not None and gateway.process.poll() is None, "no restart"
    finally:
        assert gateway.stop() == 0


def test_the_client_checks_the_gateway_certificate(mesh: Mesh, funded_account):
    with CutoutClient(mesh.gateway.address, api_key=funded_account.api_key, ca_file=mesh.ca_file) as client:
        assert client.balance().available > 0
    # The system roots do not vouch for a cell's own CA: the client refuses to talk.
    with CutoutClient(mesh.gateway.address, api_key=funded_account.api_key, ca_file=None) as client:
        with pytest.raises(grpc.RpcError) as caught:
            client.balance()
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    # Plaintext is refused by the gateway, and never allowed off this machine.
    with CutoutClient(mesh.gateway.address, api_key=funded_account.api_key, plaintext=True) as client:
        with pytest.raises(grpc.RpcError):
            client.balance()
    with pytest.raises(ValueError, match="plaintext is allowed to this machine only"):
        CutoutClient("cutout.example.com:443", plaintext=True)


def test_a_service_will_not_listen_in_plaintext_off_loopback(tmp_path):
    service = ServiceProcess("accounts", {"CUTOUT_ACCOUNTS_HOST": "0.0.0.0"}, tmp_path)
    with pytest.raises(RuntimeError, match="exited"):
        service.start()
    assert "refusing to listen in plaintext" in service.log_path.read_text()


def test_the_public_port_refuses_a_message_past_the_input_cap_before_buffering_it(tmp_path):
    """200 MiB from a caller with no key: refused from its length prefix, the gateway's peak
    memory does not grow by the message (before: 256 MiB allowed, +211 MiB RSS)."""
    pki = CellPki(tmp_path / "pki")
    dead = f"127.0.0.1:{free_port()}"
    env = {f"CUTOUT_GATEWAY_{name}_TARGET": dead for name in ("INFERENCE", "ACCOUNTS", "RETENTION")}
    gateway = ServiceProcess("gateway", env, tmp_path, pki=pki)
    gateway.start()
    try:
        assert gateway.process is not None

        def peak_rss_mib() -> float:
            status = Path(f"/proc/{gateway.process.pid}/status").read_text()  # type: ignore[union-attr]
            return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))) / 1024

        credentials = pki.ensure("mesh").channel_credentials()
        with grpc.secure_channel(gateway.address, credentials, options=channel_options()) as channel:
            health(channel)  # connected, warm
            before = peak_rss_mib()
            from cutout.v1 import cutout_pb2, cutout_pb2_grpc

            with pytest.raises(grpc.RpcError) as caught:
                cutout_pb2_grpc.CutoutStub(channel).RemoveBackground(
                    cutout_pb2.RemoveBackgroundRequest(image=b"\0" * (200 * 1024 * 1024)), timeout=60
                )
            # Refused unread either way: an image call without a key at its headers (issue 28),
            # or a message past the cap from its length prefix.
            refusals = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.RESOURCE_EXHAUSTED)
            assert caught.value.code() in refusals, caught.value.details()
            grown = peak_rss_mib() - before
        assert grown < 32, f"the gateway's peak memory grew by {grown:.0f} MiB"
    finally:
        assert gateway.stop() == 0


def test_the_probe_checks_health_over_the_service_own_tls(mesh: Mesh):
    """What the Kubernetes exec probes run (the kubelet's own gRPC probes have no TLS)."""
    for service, health_name in ((mesh.accounts, "cutout.v1.Accounts"), (mesh.gateway, "liveness")):
        env = {**os.environ, **service.tls_env(), f"{service.prefix}PORT": str(service.port)}
        done = subprocess.run(
            [sys.executable, "-m", "services.common.probe", service.name, health_name],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert (done.returncode, done.stdout.strip()) == (0, "SERVING"), done.stderr
