"""Retention's building blocks: envelope encryption and the two blob stores (real S3 API via moto)."""

from __future__ import annotations

import base64
import os

import boto3
import pytest

from services.retention import crypto
from services.retention.blobstore import BlobNotFound, BlobStore, LocalBlobStore, S3BlobStore


def master(*ids: str) -> crypto.MasterKeys:
    return crypto.MasterKeys.parse(",".join(f"{i}:{base64.b64encode(os.urandom(32)).decode()}" for i in ids))


def test_seal_round_trip_and_every_kind_of_tampering_is_detected():
    key = crypto.new_key()
    sealed = crypto.seal(key, b"cut-out bytes", b"ctx")
    assert crypto.unseal(key, sealed, b"ctx") == b"cut-out bytes"
    assert b"cut-out" not in sealed
    flipped = bytearray(sealed)
    flipped[len(sealed) // 2] ^= 1
    for key_used, data, context in [
        (key, bytes(flipped), b"ctx"),
        (crypto.new_key(), sealed, b"ctx"),
        (key, sealed, b"other context"),
        (key, sealed[:-1], b"ctx"),
    ]:
        with pytest.raises(crypto.TamperedError):
            crypto.unseal(key_used, data, context)


def test_account_keys_wrap_under_the_current_master_and_unwrap_after_rotation():
    old = master("k1")
    account_key = crypto.new_key()
    key_id, wrapped = old.wrap(account_key, "acct-1")
    assert key_id == "k1"
    rotated = crypto.MasterKeys({"k2": crypto.new_key(), **old.keys}, "k2")
    assert rotated.unwrap(key_id, wrapped, "acct-1") == account_key
    assert rotated.wrap(account_key, "acct-1")[0] == "k2"
    with pytest.raises(crypto.TamperedError):
        rotated.unwrap(key_id, wrapped, "acct-2")  # bound to its account
    with pytest.raises(crypto.TamperedError):
        crypto.MasterKeys({"k2": rotated.keys["k2"]}, "k2").unwrap(key_id, wrapped, "acct-1")


@pytest.mark.parametrize("spec", ["", "k1", "k1:notbase64!", f"k1:{base64.b64encode(b'short').decode()}"])
def test_bad_master_key_settings_are_refused(spec):
    with pytest.raises(ValueError):
        crypto.MasterKeys.parse(spec)


def s3_client(endpoint: str):  # type: ignore[no-untyped-def]
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="eu-central-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> BlobStore:
    if request.param == "local":
        return LocalBlobStore(tmp_path / "blobs")
    client = s3_client(request.getfixturevalue("s3_endpoint"))
    bucket = f"results-{os.urandom(4).hex()}"
    client.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-central-1"})
    return S3BlobStore(client, bucket, prefix="cell-eu/")


def test_blob_store_put_get_list_delete(store):
    store.put("r1", b"sealed one")
    store.put("r2", b"sealed two")
    assert store.get("r1") == b"sealed one"
    assert sorted(store.names()) == ["r1", "r2"]
    store.delete("r1")
    store.delete("r1")  # twice is fine
    with pytest.raises(BlobNotFound):
        store.get("r1")
    assert list(store.names()) == ["r2"]


def test_local_writes_are_atomic(tmp_path, monkeypatch):
    store = LocalBlobStore(tmp_path / "blobs")
    store.put("r1", b"old")

    def crash(*args, **kwargs):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        store.put("r1", b"new")
    with pytest.raises(OSError):
        store.put("r2", b"new")
    monkeypatch.undo()
    assert store.get("r1") == b"old", "a failed write never shows half a file"
    assert list(store.names()) == ["r1"]
    assert not list((tmp_path / "blobs").glob(".*")), "nothing half-written is left behind"
