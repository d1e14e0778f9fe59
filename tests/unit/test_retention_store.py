"""Kept results through the real SQL layer (SQLite and PostgreSQL) and a real blob folder."""

from __future__ import annotations

import base64
import os
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from sqlmodel import Session, select

from services.common.errors import ServiceError
from services.common.sql import make_engine, migrate
from services.retention import crypto
from services.retention.blobstore import LocalBlobStore
from services.retention.models import AccessLogEntry, AccountKey, Erasure, KeptResult
from services.retention.server import MIGRATIONS, VERSION_TABLE
from services.retention.store import ResultStore
from tests.conftest import encode

DAY = timedelta(days=1)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'retention.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def master_keys() -> crypto.MasterKeys:
    return crypto.MasterKeys.parse(f"k1:{base64.b64encode(os.urandom(32)).decode()}")


@pytest.fixture
def store(database_url, tmp_path, clock, master_keys) -> ResultStore:
    engine = make_engine(database_url)
    migrate(engine, MIGRATIONS, version_table=VERSION_TABLE)
    with Session(engine) as session, session.begin():  # PostgreSQL: the database is per session
        for table in (KeptResult, AccountKey, AccessLogEntry, Erasure):
            for row in session.exec(select(table)).all():
                session.delete(row)
    return ResultStore(engine, LocalBlobStore(tmp_path / "blobs"), master_keys, clock=clock)


@pytest.fixture
def cutout_png(astronaut) -> bytes:
    return encode(astronaut.convert("RGBA"), "PNG")


def keep(store: ResultStore, account: str, data: bytes, ttl: timedelta = 30 * DAY):
    return store.store(account, data, media_type="image/png", width=512, height=512, ttl=ttl)


def code_of(call) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    with pytest.raises(ServiceError) as caught:
        call()
    return caught.value.code


def test_stored_bytes_are_not_the_image_and_tampering_is_data_loss(store, cutout_png):
    kept = keep(store, "acct-a", cutout_png)
    blob_path = store.blobs.root / kept.result_id  # type: ignore[attr-defined]
    sealed = blob_path.read_bytes()
    assert not sealed.startswith(b"\x89PNG") and b"IHDR" not in sealed and b"IDAT" not in sealed
    windows = [cutout_png[i : i + 16] for i in range(0, len(cutout_png) - 16, 1024)]
    assert not any(window in sealed for window in windows), "no 16-byte run of the image is stored"
    assert store.fetch_by_token(kept.token).data == cutout_png

    flipped = bytearray(sealed)
    flipped[len(flipped) // 3] ^= 0x01
    blob_path.write_bytes(bytes(flipped))
    assert code_of(lambda: store.fetch_by_token(kept.token)) == grpc.StatusCode.DATA_LOSS


def test_readable_until_expiry_unreadable_after_and_gone_after_the_sweep(store, clock, cutout_png):
    kept = keep(store, "acct-a", cutout_png, ttl=DAY)
    assert kept.expires_at == clock.now + DAY
    clock.now += DAY - timedelta(seconds=1)
    assert store.fetch_owned("acct-a", kept.result_id).data == cutout_png
    clock.now += timedelta(seconds=1)
    assert code_of(lambda: store.fetch_by_token(kept.token)) == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: store.fetch_owned("acct-a", kept.result_id)) == grpc.StatusCode.NOT_FOUND
    assert store.list("acct-a") == []
    # Unreadable already; the bytes are still there until the sweep runs.
    assert (store.blobs.root / kept.result_id).exists()  # type: ignore[attr-defined]
    report = store.sweep()
    assert report.expired == 1
    assert not (store.blobs.root / kept.result_id).exists()  # type: ignore[attr-defined]
    with Session(store.engine) as session:
        assert session.get(KeptResult, kept.result_id) is None
    assert [e.action for e in store.access_log("acct-a")] == ["expire", "read", "store"]  # newest first


def test_only_the_owner_or_a_token_holder_gets_in(store, cutout_png):
    kept = keep(store, "acct-a", cutout_png)
    assert code_of(lambda: store.fetch_owned("acct-b", kept.result_id)) == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: store.delete("acct-b", kept.result_id)) == grpc.StatusCode.NOT_FOUND
    assert store.list("acct-b") == []
    tampered = kept.token[:-1] + ("x" if kept.token[-1] != "x" else "y")  # always another token
    assert code_of(lambda: store.fetch_by_token(tampered)) == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: store.fetch_by_token("")) == grpc.StatusCode.NOT_FOUND
    assert store.fetch_by_token(kept.token).data == cutout_png  # anyone holding the link
    assert [r.id for r in store.list("acct-a")] == [kept.result_id]
    store.delete("acct-a", kept.result_id)
    assert code_of(lambda: store.fetch_by_token(kept.token)) == grpc.StatusCode.NOT_FOUND
    log = store.access_log("acct-a")
    assert [(e.actor, e.action) for e in log] == [("owner", "delete"), ("token", "read"), ("owner", "store")]
    assert all(e.result_id == kept.result_id for e in log)


def test_after_erasure_a_copy_of_a_blob_opens_with_nothing_the_service_holds(store, master_keys, cutout_png):
    kept = keep(store, "acct-a", cutout_png)
    other = keep(store, "acct-b", cutout_png)
    copy = (store.blobs.root / kept.result_id).read_bytes()  # type: ignore[attr-defined]  # a "backup"
    assert store.erase_account("acct-a") == 1
    assert code_of(lambda: store.fetch_by_token(kept.token)) == grpc.StatusCode.NOT_FOUND
    assert store.fetch_by_token(other.token).data == cutout_png, "other accounts are untouched"

    with Session(store.engine) as session:
        assert session.get(AccountKey, "acct-a") is None
        remaining = session.exec(select(AccountKey)).all()
        wrapped_object_keys = [r.wrapped_object_key for r in session.exec(select(KeptResult)).all()]
    context = crypto.object_context("acct-a", kept.result_id)
    candidate_keys = [*master_keys.keys.values()]
    for row in remaining:
        account_key = master_keys.unwrap(row.master_key_id, row.wrapped_key, row.account_id)
        candidate_keys.append(account_key)
        for wrapped in wrapped_object_keys:
            for ctx in (context, crypto.object_context(row.account_id, other.result_id)):
                try:
                    candidate_keys.append(crypto.unseal(account_key, wrapped, ctx))
                except crypto.TamperedError:
                    pass
    assert candidate_keys, "the service still holds keys; none of them may open the copy"
    for key in candidate_keys:
        with pytest.raises(crypto.TamperedError):
            crypto.unseal(key, copy, context)


def test_an_interrupted_store_is_never_listed_nor_readable_and_is_swept(store, clock, cutout_png):
    class DiskGone(Exception):
        pass

    def crash(name: str, data: bytes) -> None:
        raise DiskGone

    real_put = store.blobs.put
    store.blobs.put = crash  # type: ignore[method-assign]
    with pytest.raises(DiskGone):
        keep(store, "acct-a", cutout_png)
    store.blobs.put = real_put  # type: ignore[method-assign]
    assert store.list("acct-a") == []
    with Session(store.engine) as session:
        (pending,) = session.exec(select(KeptResult)).all()
        assert pending.state == "pending"
    assert code_of(lambda: store.fetch_owned("acct-a", pending.id)) == grpc.StatusCode.NOT_FOUND
    assert store.sweep().abandoned == 0, "a store in progress is left alone"
    clock.now += timedelta(hours=1)
    assert store.sweep().abandoned == 1
    with Session(store.engine) as session:
        assert session.exec(select(KeptResult)).all() == []
