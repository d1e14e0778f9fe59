"""Issue 28 in the ledger alone (SQLite, every migration): a served key's replays are counted
and bounded, name the kept result, write no ledger entry; fingerprints are keyed per account."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from services.accounts.db import make_engine, migrate
from services.accounts.ledger import ACCOUNTS, ENTRIES, RESERVATIONS, Ledger, Outcome

START = datetime(2031, 1, 1, tzinfo=UTC)


def _ledger(tmp_path, replays: int = 3) -> Ledger:
    engine = make_engine(f"sqlite:///{tmp_path / 'accounts.db'}")
    migrate(engine)
    with engine.begin() as db:
        for account_id in ("a", "b"):
            db.execute(
                ACCOUNTS.insert().values(
                    id=account_id,
                    email=f"{account_id}@example.com",
                    password_hash="-",
                    region="eu",
                    plan="free",
                    age_confirmed=True,
                    created_at=START,
                )
            )
    ledger = Ledger(engine, hold_timeout=timedelta(minutes=5), clock=lambda: START, replays_per_key=replays)
    for account_id in ("a", "b"):
        ledger.grant(account_id, 10_000, "admin", START + timedelta(days=30))
    return ledger


def test_replays_are_counted_per_key_name_the_kept_result_and_write_no_entry(tmp_path) -> None:
    ledger = _ledger(tmp_path)
    first = ledger.reserve("a", "k", 1000, "h" * 64, replay=True)
    assert first.outcome == Outcome.NEW
    ledger.commit("a", first.reservation_id, kept_result_id="kept-1")
    with ledger.engine.connect() as db:
        entries = db.execute(select(ENTRIES)).all()
    lefts = []
    for _ in range(3):
        again = ledger.reserve("a", "k", 1000, "h" * 64, replay=True)
        assert (again.outcome, again.kept_result_id, again.reservation_id) == (
            Outcome.REPLAY,
            "kept-1",
            first.reservation_id,
        )
        lefts.append(again.replays_left)
    assert lefts == [2, 1, 0]
    assert ledger.reserve("a", "k", 1000, "h" * 64, replay=True).outcome == Outcome.DUPLICATE_COMMITTED
    # A caller that cannot serve a replay (an older gateway) is told as before.
    assert ledger.reserve("a", "k", 1000, "h" * 64).outcome == Outcome.DUPLICATE_COMMITTED
    with ledger.engine.connect() as db:
        assert db.execute(select(ENTRIES)).all() == entries, "replays write no ledger entry"
    assert ledger.balance("a").available == 9000


def test_fingerprints_are_keyed_per_account_and_compaction_drops_the_kept_id(tmp_path) -> None:
    ledger = _ledger(tmp_path, replays=0)
    digest = hashlib.sha256(b"a photo").hexdigest()
    for account_id in ("a", "b"):
        ledger.commit(account_id, ledger.reserve(account_id, "k", 1000, digest).reservation_id, "kept")
    with ledger.engine.connect() as db:
        keys = dict(db.execute(select(ACCOUNTS.c.id, ACCOUNTS.c.fingerprint_key)).all())
        stored = dict(db.execute(select(RESERVATIONS.c.account_id, RESERVATIONS.c.request_hash)).all())
    assert len(set(keys.values())) == 2 and all(len(key) == 64 for key in keys.values())
    assert digest not in stored.values() and stored["a"] != stored["b"]
    assert stored["a"] == hmac.new(bytes.fromhex(keys["a"]), digest.encode(), hashlib.sha256).hexdigest()
    # REPLAYS_PER_KEY 0: no replay at all, as before #28.
    assert ledger.reserve("a", "k", 1000, digest, replay=True).outcome == Outcome.DUPLICATE_COMMITTED
    later = Ledger(ledger.engine, hold_timeout=timedelta(minutes=5), clock=lambda: START + timedelta(days=2))
    later.compact(timedelta(hours=24), timedelta(days=7))
    with ledger.engine.connect() as db:
        rows = db.execute(select(RESERVATIONS.c.request_hash, RESERVATIONS.c.kept_result_id)).all()
    assert rows and all(row == ("", "") for row in rows)
