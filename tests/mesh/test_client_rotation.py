"""The gateway's client certificate inside the cell (mutual TLS to accounts, inference and
retention) is re-read when its files change, without a restart (issue #14), as its serving
certificate already is (tests/mesh/test_tls.py)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import grpc
import pytest

from cutout.v1 import account_pb2, cutout_pb2_grpc
from services.common.tls import Identity
from services.launcher import Mesh
from tests.conftest import another_gateway, new_account


def _install(source: Path, target: Path) -> None:
    """Swaps a file in atomically, as the kubelet swaps a mounted Secret."""
    staged = target.with_name(f".{target.name}.new")
    shutil.copyfile(source, staged)
    os.chmod(staged, 0o600)
    os.replace(staged, target)


def test_the_gateway_presents_a_renewed_client_certificate_on_the_next_call(mesh: Mesh, tmp_path):
    own = tmp_path / "identity"
    own.mkdir()
    cert_file, key_file = own / "mesh.pem", own / "mesh-key.pem"
    gateway = mesh.pki.ensure("gateway")
    # A cell certificate whose name accounts does not answer: what accounts reports about a
    # caller shows which certificate the gateway presented.
    stranger: Identity = mesh.pki.issue("stranger")
    for identity_file, file in ((gateway.key_file, key_file), (gateway.cert_file, cert_file)):
        _install(identity_file, file)
    env = {
        **mesh.env,
        "CUTOUT_GATEWAY_MESH_CERT_FILE": str(cert_file),
        "CUTOUT_GATEWAY_MESH_KEY_FILE": str(key_file),
    }
    accounts_log = mesh.accounts.log_path

    (tmp_path / "run").mkdir()
    with another_gateway(mesh, tmp_path / "run", env) as second, second.channel() as channel:
        account = new_account(channel, mesh.admin_token)
        stub = cutout_pb2_grpc.CutoutStub(channel)

        def balance() -> account_pb2.Balance:
            return stub.GetBalance(account_pb2.GetBalanceRequest(), metadata=account.metadata, timeout=30)

        balance()  # as "gateway"
        refusals = accounts_log.read_text().count("from 'stranger'")

        # Half a rotation (the new key, the old certificate): not taken, the old pair goes on.
        _install(stranger.key_file, key_file)
        balance()
        # The certificate lands: the very next call presents it, and accounts refuses "stranger".
        _install(stranger.cert_file, cert_file)
        with pytest.raises(grpc.RpcError) as caught:
            balance()
        assert caught.value.code() != grpc.StatusCode.OK
        assert accounts_log.read_text().count("from 'stranger'") > refusals, "accounts saw the new certificate"

        # Back to a gateway certificate, again without a restart: answered.
        _install(gateway.key_file, key_file)
        _install(gateway.cert_file, cert_file)
        assert balance().available_decimal
        assert second.process is not None and second.process.poll() is None, "the same process throughout"
