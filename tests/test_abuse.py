"""Attacks on accounts and keys, tried through the real mesh (issue 14's list)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import grpc

from cutout.v1 import account_pb2, cutout_pb2, cutout_pb2_grpc
from services.mesh import Mesh
from tests.conftest import encode, new_account


def test_a_key_revoked_during_an_idle_stream_ends_it_within_a_second(mesh: Mesh, raw_channel, astronaut):
    """Before, the key was re-checked only when the next item came, and at most every 30 s."""
    account = new_account(raw_channel, mesh.admin_token, credits=5)
    cutout = cutout_pb2_grpc.CutoutStub(raw_channel)
    second = cutout.CreateApiKey(
        account_pb2.CreateApiKeyRequest(name="stream", email=account.email, password=account.password), timeout=30
    )
    photo = encode(astronaut.resize((128, 128)), "JPEG", quality=90)
    done = threading.Event()

    def requests() -> Iterator[cutout_pb2.StreamRequest]:
        yield cutout_pb2.StreamRequest(item=cutout_pb2.StreamItem(id="first", image=photo))
        done.wait(60)  # then nothing more: the stream stays open and idle

    try:
        call = cutout.RemoveBackgroundStream(requests(), metadata=[("x-api-key", second.api_key)], timeout=60)
        assert next(call).item.WhichOneof("outcome") == "response"
        cutout.RevokeApiKey(account_pb2.RevokeApiKeyRequest(id=second.key.id), metadata=account.metadata, timeout=30)
        revoked_at = time.monotonic()
        try:
            list(call)
            raise AssertionError("the stream went on after its key was revoked")
        except grpc.RpcError as error:
            ended_after = time.monotonic() - revoked_at
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error.details()
            assert "revoked" in error.details()
    finally:
        done.set()
    assert ended_after < 1.0, f"the stream ended {ended_after:.2f}s after the revocation"
