"""The gateway's credit logic on its own (services/gateway/charging.py), against a fake
accounts service that records what it was asked. The same rules through the real mesh:
tests/mesh/test_airtight.py and tests/mesh/test_credits.py."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import grpc
import pytest

from cutout.v1 import accounts_pb2, cutout_pb2, options_pb2
from services.common.errors import ServiceError, reason_of
from services.gateway.charging import Charger, Handoff, price, report_charge
from services.gateway.settings import GatewaySettings

SETTINGS = GatewaySettings(commit_retry_s=0.5, settle_retry_s=2.0, accounts_timeout_s=0.2)


def rpc_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=code.name)


class FakeAccounts:
    """Accounts' ledger calls: each answers from a script (a reply, or an error to raise)."""

    def __init__(self, *, outcome: int = accounts_pb2.RESERVE_OUTCOME_NEW, commit: list[Any] | None = None) -> None:
        self.outcome = outcome
        self.commit_script = list(commit or [])
        self.calls: list[tuple[str, Any]] = []
        self.refuse_sizes: set[int] = set()  # amounts answered INSUFFICIENT_CREDITS

    async def AuthorizeAndReserve(self, request: accounts_pb2.AuthorizeAndReserveRequest, **_: Any) -> Any:
        self.calls.append(("reserve", request.reserve.amount_millicredits))
        if request.reserve.amount_millicredits in self.refuse_sizes:
            raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION, "not enough", reason="INSUFFICIENT_CREDITS")
        reserved = accounts_pb2.ReserveResponse(reservation_id="r1", outcome=self.outcome)
        return accounts_pb2.AuthorizeAndReserveResponse(reserved=reserved)

    async def Commit(self, request: accounts_pb2.CommitRequest, **_: Any) -> None:
        self.calls.append(("commit", request.reservation_id))
        step = self.commit_script.pop(0) if self.commit_script else None
        if isinstance(step, grpc.aio.AioRpcError):
            raise step

    async def Release(self, request: accounts_pb2.ReleaseRequest, **_: Any) -> None:
        self.calls.append(("release" if request.undelivered else "release-held", request.reservation_id))

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.calls]


class FakeContext:
    def __init__(self, remaining: float | None = 30.0) -> None:
        self.remaining = remaining

    def time_remaining(self) -> float | None:
        return self.remaining

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-api-key", "key"),)


async def call_accounts(context: Any, method: Callable[..., Awaitable[Any]], request: object) -> Any:
    """Downstreams.accounts_call, less the channel: a ServiceError passes as it is."""
    return await method(request)


def charger(accounts: FakeAccounts) -> Charger:
    return Charger(SETTINGS, accounts, call_accounts)


def reserve_request(amount: int = 1000) -> accounts_pb2.ReserveRequest:
    return accounts_pb2.ReserveRequest(account_id="a1", idempotency_key="k1", amount_millicredits=amount)


async def settled(
    accounts: FakeAccounts,
    work: Callable[[], Awaitable[str]],
    deliver: Callable[[str, Handoff], Awaitable[None]] | None = None,
) -> str:
    """One charged piece of work, then the background ledger work allowed to finish."""
    credit = charger(accounts)
    context = FakeContext()
    reserve = reserve_request()
    reserved, working = await credit.reserve_then_start(
        context, reserve, lambda: asyncio.ensure_future(work()), keyed=True
    )

    async def finish(reply: str) -> str:
        return reply

    def unavailable(error: grpc.aio.AioRpcError) -> ServiceError:
        return ServiceError(grpc.StatusCode.UNAVAILABLE, "work failed")

    try:
        return await credit.charged(context, reserve, reserved, working, finish, deliver, unavailable)
    finally:
        await asyncio.gather(*list(credit._to_finish))


async def result() -> str:
    return "cut-out"


async def failing() -> str:
    raise rpc_error(grpc.StatusCode.UNAVAILABLE)


def test_a_result_handed_over_is_committed_once_and_never_released() -> None:
    accounts = FakeAccounts()
    assert asyncio.run(settled(accounts, result)) == "cut-out"
    assert accounts.kinds() == ["reserve", "commit"]


def test_failed_work_is_released_and_never_committed() -> None:
    accounts = FakeAccounts()
    with pytest.raises(ServiceError) as caught:
        asyncio.run(settled(accounts, failing))
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert accounts.kinds() == ["reserve", "release"]


def test_a_result_whose_hand_over_fails_is_refunded_after_its_commit() -> None:
    async def cancelled_on_the_way(reply: str, handoff: Handoff) -> None:
        raise asyncio.CancelledError  # the caller went away before the bytes went to gRPC

    accounts = FakeAccounts()
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(settled(accounts, result, cancelled_on_the_way))
    assert accounts.kinds() == ["reserve", "commit", "release"], "the release comes after the commit"


def test_a_result_handed_to_grpc_stays_charged_even_if_the_call_then_ends() -> None:
    async def handed_then_cancelled(reply: str, handoff: Handoff) -> None:
        handoff.handed = True
        raise asyncio.CancelledError

    accounts = FakeAccounts()
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(settled(accounts, result, handed_then_cancelled))
    assert accounts.kinds() == ["reserve", "commit"]


def test_a_commit_retried_until_accounts_answers_hands_the_result_over() -> None:
    accounts = FakeAccounts(commit=[rpc_error(grpc.StatusCode.UNAVAILABLE), rpc_error(grpc.StatusCode.UNAVAILABLE)])
    assert asyncio.run(settled(accounts, result)) == "cut-out"
    assert accounts.kinds() == ["reserve", "commit", "commit", "commit"]


def test_a_commit_that_never_lands_withholds_the_result_and_releases() -> None:
    accounts = FakeAccounts(commit=[rpc_error(grpc.StatusCode.UNAVAILABLE)] * 100)
    with pytest.raises(ServiceError) as caught:
        asyncio.run(settled(accounts, result))
    assert (caught.value.code, caught.value.reason) == (grpc.StatusCode.UNAVAILABLE, "DEPENDENCY_UNAVAILABLE")
    assert accounts.kinds()[-1] == "release" and "commit" in accounts.kinds()


def test_a_hold_that_lapsed_before_its_commit_is_a_retryable_abort() -> None:
    accounts = FakeAccounts(commit=[rpc_error(grpc.StatusCode.FAILED_PRECONDITION)])
    with pytest.raises(ServiceError) as caught:
        asyncio.run(settled(accounts, result))
    assert (caught.value.code, caught.value.reason) == (grpc.StatusCode.ABORTED, "RESERVATION_RELEASED")
    assert caught.value.retry_after_s


@pytest.mark.parametrize(
    ("outcome", "code", "reason"),
    [
        (accounts_pb2.RESERVE_OUTCOME_DUPLICATE_HELD, grpc.StatusCode.ABORTED, "IDEMPOTENCY_KEY_IN_USE"),
        (accounts_pb2.RESERVE_OUTCOME_DUPLICATE_COMMITTED, grpc.StatusCode.ALREADY_EXISTS, "ALREADY_SERVED"),
    ],
)
def test_a_replayed_key_is_refused_before_the_work_starts(outcome: int, code: grpc.StatusCode, reason: str) -> None:
    accounts = FakeAccounts(outcome=outcome)
    started: list[bool] = []

    def start() -> asyncio.Future[str]:
        started.append(True)
        return asyncio.ensure_future(result())

    async def replay() -> None:
        await charger(accounts).reserve_then_start(FakeContext(), reserve_request(), start, keyed=True)

    with pytest.raises(ServiceError) as caught:
        asyncio.run(replay())
    assert (caught.value.code, caught.value.reason) == (code, reason)
    assert started == [], "a replay never runs the model"


def test_a_replay_is_made_and_handed_over_without_a_commit_or_release() -> None:
    """Issue 28: a served key's replay holds nothing, so there is nothing to settle, whether it
    is handed over or fails."""
    accounts = FakeAccounts(outcome=accounts_pb2.RESERVE_OUTCOME_REPLAY)
    handed: list[str] = []

    async def deliver(response: str, handoff: Handoff) -> None:
        handed.append(response)

    assert asyncio.run(settled(accounts, result, deliver)) == "cut-out" and handed == ["cut-out"]
    assert accounts.kinds() == ["reserve"]
    failed = FakeAccounts(outcome=accounts_pb2.RESERVE_OUTCOME_REPLAY)
    with pytest.raises(ServiceError):
        asyncio.run(settled(failed, failing))
    assert failed.kinds() == ["reserve"], "a failed replay releases nothing (it held nothing)"


def test_size_auto_takes_full_when_the_balance_covers_it_else_preview() -> None:
    request = cutout_pb2.RemoveBackgroundRequest(
        image=b"x", options=options_pb2.RemoveBackgroundOptions(size=options_pb2.SIZE_AUTO)
    )
    full, preview = price(SETTINGS, _sized(options_pb2.SIZE_FULL)), price(SETTINGS, _sized(options_pb2.SIZE_PREVIEW))

    async def auto(accounts: FakeAccounts) -> int:
        reserve, _, resolved = await charger(accounts).reserve_auto(FakeContext(), "a1", request, "k1")
        assert reserve.amount_millicredits == price(SETTINGS, resolved.options)
        return resolved.options.size

    assert asyncio.run(auto(FakeAccounts())) == options_pb2.SIZE_FULL
    poor = FakeAccounts()
    poor.refuse_sizes = {full}
    assert asyncio.run(auto(poor)) == options_pb2.SIZE_PREVIEW
    assert poor.calls == [("reserve", full), ("reserve", preview)]
    broke = FakeAccounts()
    broke.refuse_sizes = {full, preview}
    with pytest.raises(ServiceError) as caught:
        asyncio.run(auto(broke))
    assert reason_of(caught.value) == "INSUFFICIENT_CREDITS"


def _sized(size: int, model: str = "") -> options_pb2.RemoveBackgroundOptions:
    return options_pb2.RemoveBackgroundOptions(size=size, model=model)


def test_prices_are_millicredits_and_the_response_shows_both_units() -> None:
    assert price(SETTINGS, _sized(options_pb2.SIZE_FULL)) == int(SETTINGS.price_full * 1000)
    assert price(SETTINGS, _sized(options_pb2.SIZE_PREVIEW)) == int(SETTINGS.price_preview * 1000)
    response = cutout_pb2.RemoveBackgroundResponse()
    report_charge(response, 2500)
    assert (response.credits_charged_decimal, response.credits_charged) == ("2.5", 2)


def test_a_model_with_a_price_of_its_own_costs_it_and_its_preview_the_same_share() -> None:
    settings = GatewaySettings(
        price_full=Decimal(1), price_preview=Decimal("0.25"), price_per_model={"isnet": Decimal(3)}
    )
    assert price(settings, _sized(options_pb2.SIZE_FULL, "isnet")) == 3000
    assert price(settings, _sized(options_pb2.SIZE_PREVIEW, "isnet")) == 750
    assert price(settings, _sized(options_pb2.SIZE_FULL, "u2net")) == 1000  # no price of its own: price_full
    with pytest.raises(ValueError):
        GatewaySettings(price_per_model={"isnet": Decimal("0.0001")})
