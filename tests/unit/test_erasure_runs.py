"""Two runs of one erasure at once (the admin's call and the pending sweep): the second waits
for the first and answers with its outcome, not with "pending" (services/accounts/rights.py)."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

from services.accounts.db import make_engine, migrate
from services.accounts.ledger import ACCOUNTS
from services.accounts.rights import DONE, PENDING, Erasures


def _erasures(tmp_path, erase_retention) -> Erasures:
    engine = make_engine(f"sqlite:///{tmp_path / 'accounts.db'}")
    migrate(engine)
    with engine.begin() as db:
        db.execute(
            ACCOUNTS.insert().values(
                id="a",
                email="a@example.com",
                password_hash="-",
                region="eu",
                plan="free",
                age_confirmed=True,
                created_at=datetime(2031, 1, 1, tzinfo=UTC),
            )
        )
    return Erasures(engine, erase_retention)


def test_a_run_that_finds_another_in_progress_waits_for_its_outcome(tmp_path):
    started, release = threading.Event(), threading.Event()

    def slow_retention(account_id: str) -> None:
        started.set()
        release.wait(10)

    erasures = _erasures(tmp_path, slow_retention)
    erasure = erasures.request("a", "admin:alice")
    outcomes: dict[str, str] = {}
    sweep = threading.Thread(target=lambda: outcomes.setdefault("sweep", erasures.run(erasure.erasure_id)))
    sweep.start()
    assert started.wait(10)
    assert erasures.run(erasure.erasure_id, wait_s=0) == PENDING  # the sweep's own rule: never wait
    call = threading.Thread(target=lambda: outcomes.setdefault("call", erasures.run(erasure.erasure_id, wait_s=10)))
    call.start()
    time.sleep(0.2)
    assert "call" not in outcomes, "the call waits while the sweep works"
    release.set()
    sweep.join(10)
    call.join(10)
    assert outcomes == {"sweep": DONE, "call": DONE}
