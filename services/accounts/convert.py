"""Account rows as cutout.v1 messages (shared by the Accounts and Admin servicers)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from google.protobuf import timestamp_pb2
from sqlalchemy import Row

from cutout.v1 import account_pb2, rights_pb2
from services.accounts.ledger import BalanceView
from services.accounts.models import AccessLogEntry, Account, ApiKey
from services.common import credits
from services.common.sql import aware


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def profile_pb(account: Account) -> account_pb2.Profile:
    return account_pb2.Profile(
        account_id=account.id,
        email=account.email,
        display_name=account.display_name,
        region=account.region,
        plan=account.plan,
        marketing_opt_in=account.marketing_opt_in,
        created_at=timestamp(account.created_at),
        usage_stats_opt_out=account.usage_stats_opt_out,
        processing_restricted=account.processing_restricted,
    )


def access_pb(entry: AccessLogEntry) -> rights_pb2.AccessRecord:
    return rights_pb2.AccessRecord(
        at=timestamp(aware(entry.at)), actor=entry.actor, action=entry.action, service="accounts"
    )


def balance_pb(balance: BalanceView) -> account_pb2.Balance:
    """The ledger's millicredits as exact decimals, and their whole parts in the older fields."""
    return account_pb2.Balance(
        available=credits.whole(balance.available),
        held=credits.whole(balance.held),
        next_expiry=timestamp(balance.next_expiry),
        expiring_next=credits.whole(balance.expiring_next),
        available_decimal=credits.text(balance.available),
        held_decimal=credits.text(balance.held),
        expiring_next_decimal=credits.text(balance.expiring_next),
    )


def key_pb(key: ApiKey) -> account_pb2.ApiKey:
    return account_pb2.ApiKey(
        id=key.id,
        name=key.name,
        prefix=key.prefix,
        created_at=timestamp(key.created_at),
        last_used_at=timestamp(key.last_used_at),
        revoked_at=timestamp(key.revoked_at),
    )


def entry_pb(entry: Row[Any], idempotency_key: str) -> account_pb2.LedgerEntry:
    return account_pb2.LedgerEntry(
        id=str(entry.seq),
        kind=entry.kind,
        amount=credits.whole(entry.amount),
        held=credits.whole(entry.held),
        amount_decimal=credits.text(entry.amount),
        held_decimal=credits.text(entry.held),
        reservation_id=entry.reservation_id or "",
        grant_id=entry.grant_id or "",
        idempotency_key=idempotency_key,
        created_at=timestamp(entry.created_at),
    )
