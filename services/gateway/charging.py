"""How the gateway charges for work: reserve, commit before the result is handed over,
undo what was not handed over. Every result handed to a caller is charged exactly once.

- A request is validated before anything is reserved (services/gateway/validation.py):
  a body that is no picture, or an impossible option, writes no ledger entry.
- The price is the settings' price of the size asked for (SIZE_AUTO: FULL if the balance
  covers it, else PREVIEW), or of an erase; the ledger counts millicredits.
- A client's idempotency key is reserved before the work starts: a key another call holds
  is refused with ABORTED (IDEMPOTENCY_KEY_IN_USE, retry, nothing run); a key already
  served and charged for the same request is a *replay*: the work is made again from the
  same request and handed over free, naming the result the first call kept (nothing is
  kept twice). Accounts counts replays per key (REPLAYS_PER_KEY); past them, ALREADY_EXISTS
  (ALREADY_SERVED). Nothing of a result is held for replays: making it again is what keeps
  "written nowhere unless kept" (docs/decisions/idempotency-replay.md). Without a key from
  the client the reservation runs beside the work (nothing can replay it).
- The commit comes before the hand-over and is retried while the call has time; a result
  whose charge cannot be recorded is not handed over (UNAVAILABLE, retry with the key).
- What was reserved and not handed over (any failure, a cancellation, a stream that ended
  before its item was written) is released, or refunded if its commit had landed, by a
  task that outlives the call and retries until accounts answers.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from collections.abc import Awaitable, Callable, Coroutine
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from cutout.v1 import accounts_pb2, cutout_pb2, erase_pb2, options_pb2
from services.common import credits
from services.common.errors import ServiceError, reason_of
from services.common.tasks import start_kept
from services.common.telemetry import count, meter
from services.gateway.downstreams import ACCOUNTS_UNAVAILABLE, api_key
from services.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R", bound=Message)

_credits = meter.create_counter(
    "cutout.credits",
    description="Credits reserved, committed, released and refunded for removals and erasures, by operation",
)

# Outcomes under which this call holds the credits and must commit or release them.
OWNED = (accounts_pb2.RESERVE_OUTCOME_NEW, accounts_pb2.RESERVE_OUTCOME_DUPLICATE_RELEASED)
REPLAY = accounts_pb2.RESERVE_OUTCOME_REPLAY
# What a failed accounts call may be retried on: it did not answer (or answered "busy").
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED)


class Handoff:
    """Whether a result was handed to the caller: set just before the bytes go to gRPC.

    From then on the caller may have it, so it stays charged even if the call ends now.
    """

    def __init__(self) -> None:
        self.handed = False


Deliver = Callable[[R, Handoff], Awaitable[None]]


# -- what is charged -------------------------------------------------------------------


def price(settings: GatewaySettings, options: options_pb2.RemoveBackgroundOptions) -> int:
    """The price of a removal with these options (size, model), in millicredits (the ledger's unit)."""
    full = settings.price_per_model.get(options.model, settings.price_full)
    if options.size == options_pb2.SIZE_PREVIEW:
        share = full * settings.price_preview / settings.price_full
        return credits.to_milli(share.quantize(Decimal("0.001"), rounding=ROUND_HALF_UP))
    return credits.to_milli(full)


def request_hash(request: cutout_pb2.RemoveBackgroundRequest) -> str:
    """sha256 of what the request asks (image and options): only this is stored, never the image."""
    digest = hashlib.sha256(request.image)
    digest.update(request.options.SerializeToString(deterministic=True))
    return digest.hexdigest()


def erase_hash(request: erase_pb2.EraseRegionsRequest) -> str:
    """As request_hash, for an erase; its own prefix, so a key reused for a removal never matches it."""
    digest = hashlib.sha256(b"erase\0")
    digest.update(request.image)
    digest.update(request.regions.SerializeToString(deterministic=True))
    return digest.hexdigest()


def report_charge(response: cutout_pb2.RemoveBackgroundResponse, millicredits: int) -> None:
    response.credits_charged_decimal = credits.text(millicredits)
    response.credits_charged = credits.whole(millicredits)  # the older field: whole credits


# -- the ledger calls ------------------------------------------------------------------


def refused_duplicate(outcome: int, idempotency_key: str) -> ServiceError | None:
    """The error for a key whose first call is running or was served, or None to go on."""
    if outcome == accounts_pb2.RESERVE_OUTCOME_DUPLICATE_HELD:
        return ServiceError(
            grpc.StatusCode.ABORTED,
            f"another call with idempotency key {idempotency_key!r} is in progress; retry after it ends "
            "to get its outcome",
            reason="IDEMPOTENCY_KEY_IN_USE",
            retry_after_s=1.0,
        )
    if outcome == accounts_pb2.RESERVE_OUTCOME_DUPLICATE_COMMITTED:
        return ServiceError(
            grpc.StatusCode.ALREADY_EXISTS,
            f"idempotency key {idempotency_key!r} was already served and charged, and its free replays "
            "are used up (each makes the result again), so it is not made again; a kept result is in "
            "ListResults. Use a new key for a new removal",
            reason="ALREADY_SERVED",
        )
    return None


class Charger:
    """Reserves, commits and releases credits in accounts for the gateway's charged work."""

    def __init__(self, settings: GatewaySettings, accounts: Any, call: Callable[..., Awaitable[Any]]) -> None:
        self.settings = settings
        self.accounts = accounts  # the Accounts stub
        self._call = call  # Downstreams.accounts_call
        # Ledger work that must finish even when the call that started it is cancelled.
        self._to_finish: set[asyncio.Task[Any]] = set()

    def to_the_end(self, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Runs `work` as a task that a caller's cancellation does not stop (await it shielded)."""
        return start_kept(self._to_finish, work)

    async def reserve(
        self, context: grpc.aio.ServicerContext, reserve: accounts_pb2.ReserveRequest
    ) -> accounts_pb2.ReserveResponse:
        """A hold this call owns; duplicates of another call's key are refused (and hold nothing)."""
        # Run to its end even if this call is cancelled: a hold made after the cancel
        # arrived must still be released, not left to lapse.
        # One accounts call: the key looked up again (admission may have let the call in on a
        # recent answer; a restricted account is refused) and the credits reserved.
        authorize = accounts_pb2.AuthorizeAndReserveRequest(api_key=api_key(context), reserve=reserve)

        async def authorize_and_reserve() -> accounts_pb2.ReserveResponse:
            reply = await self._call(context, self.accounts.AuthorizeAndReserve, authorize)
            return reply.reserved

        reserving = self.to_the_end(authorize_and_reserve())
        try:
            reserved = await asyncio.shield(reserving)
        except asyncio.CancelledError:
            self.to_the_end(self._release_once_reserved(reserve, reserving))
            raise
        refused = refused_duplicate(reserved.outcome, reserve.idempotency_key)
        if refused is not None:
            raise refused
        if reserved.outcome == REPLAY:
            log.info("a replay of a served idempotency key (%d more allowed); not charged", reserved.replays_left)
        else:
            count(_credits, reserve.amount_millicredits / credits.MILLI, {"operation": "reserve"})
        return reserved

    async def reserve_then_start(
        self,
        context: grpc.aio.ServicerContext,
        reserve: accounts_pb2.ReserveRequest,
        start: Callable[[], asyncio.Future[T]],
        *,
        keyed: bool,
    ) -> tuple[accounts_pb2.ReserveResponse, asyncio.Future[T]]:
        """The hold and the started work. A client's key is reserved first, so that a refused
        replay never starts the model; a key of our own is reserved while the work runs,
        keeping the round trip off the latency (the work is cancelled if reserving fails)."""
        if keyed:
            return await self.reserve(context, reserve), start()
        working = start()
        try:
            return await self.reserve(context, reserve), working
        except BaseException:
            working.cancel()
            # Its outcome no longer matters; retrieving it keeps asyncio from logging it.
            working.add_done_callback(lambda done: done.cancelled() or done.exception())
            raise

    async def reserve_auto(
        self,
        context: grpc.aio.ServicerContext,
        account_id: str,
        request: cutout_pb2.RemoveBackgroundRequest,
        idempotency_key: str,
    ) -> tuple[accounts_pb2.ReserveRequest, accounts_pb2.ReserveResponse, cutout_pb2.RemoveBackgroundRequest]:
        """SIZE_AUTO: FULL if the balance covers it, else PREVIEW; the reservation and the request
        with the size it resolved to.

        Each size is reserved under the hash of the request as resolved, so a retry of a call
        that was made at PREVIEW meets IDEMPOTENCY_KEY_REUSED at FULL, then its own charge at
        PREVIEW, and is served at the size it paid for.
        """
        first_error: ServiceError | None = None
        for size in (options_pb2.SIZE_FULL, options_pb2.SIZE_PREVIEW):
            resolved = cutout_pb2.RemoveBackgroundRequest()
            resolved.CopyFrom(request)
            resolved.options.size = size
            reserve = accounts_pb2.ReserveRequest(
                account_id=account_id,
                idempotency_key=idempotency_key,
                amount_millicredits=price(self.settings, resolved.options),
                request_hash=await asyncio.to_thread(request_hash, resolved),
                replay=True,
            )
            try:
                return reserve, await self.reserve(context, reserve), resolved
            except ServiceError as error:
                if reason_of(error) not in ("INSUFFICIENT_CREDITS", "IDEMPOTENCY_KEY_REUSED"):
                    raise
                first_error = first_error or error
        assert first_error is not None
        raise first_error

    async def charged(
        self,
        context: grpc.aio.ServicerContext,
        reserve: accounts_pb2.ReserveRequest,
        reserved: accounts_pb2.ReserveResponse,
        working: asyncio.Future[T],
        finish: Callable[[T], Awaitable[R]],
        deliver: Deliver[R] | None,
        unavailable: Callable[[grpc.aio.AioRpcError], ServiceError],
        discard: Callable[[R], Awaitable[None]] | None = None,
        kept_of: Callable[[R], str] | None = None,
    ) -> R:
        """Settles a hold for a piece of work: the response, once it is charged (and handed over,
        with `deliver`); anything not handed over is released or refunded, and `discard` undoes
        what `finish` stored for it; `kept_of` names the result it kept, recorded with the
        charge for replays. A replay holds nothing: it is only made and handed over. Errors
        are raised as ServiceError (`unavailable` maps the work's own failures)."""
        if reserved.outcome == REPLAY:
            return await self._replayed(working, finish, deliver, unavailable)
        settle = accounts_pb2.CommitRequest(account_id=reserve.account_id, reservation_id=reserved.reservation_id)
        handoff = Handoff()
        response: R | None = None
        committing: asyncio.Task[None] | None = None
        try:
            try:
                reply = await working
            except grpc.aio.AioRpcError as error:
                log.info("a request failed downstream: %s (not charged)", error.code().name)
                raise unavailable(error) from None
            response = await finish(reply)
            if kept_of is not None:
                settle.kept_result_id = kept_of(response)
            committing = self.to_the_end(self._commit(context, settle, reserve.amount_millicredits))
            await asyncio.shield(committing)
            if deliver is None:
                handoff.handed = True  # returned to gRPC by the handler right after this
            else:
                await deliver(response, handoff)
        finally:
            if not handoff.handed:
                # Failed, cancelled or not handed over: released if held, refunded if committed.
                self.to_the_end(self._undo(settle, reserve.amount_millicredits, committing))
                if response is not None and discard is not None:
                    self.to_the_end(discard(response))
        return response

    @staticmethod
    async def _replayed(
        working: asyncio.Future[T],
        finish: Callable[[T], Awaitable[R]],
        deliver: Deliver[R] | None,
        unavailable: Callable[[grpc.aio.AioRpcError], ServiceError],
    ) -> R:
        """A served key made again: nothing to commit, release or discard."""
        try:
            reply = await working
        except grpc.aio.AioRpcError as error:
            log.info("a replay failed downstream: %s (not charged)", error.code().name)
            raise unavailable(error) from None
        response = await finish(reply)
        if deliver is not None:
            await deliver(response, Handoff())
        return response

    async def _commit(self, context: grpc.aio.ServicerContext, settle: accounts_pb2.CommitRequest, amount: int) -> None:
        """Commits, retrying while accounts does not answer and the call has time; a result whose
        charge cannot be recorded is not handed over (raised as UNAVAILABLE)."""
        loop = asyncio.get_running_loop()
        remaining = context.time_remaining()
        budget = self.settings.commit_retry_s if remaining is None else min(self.settings.commit_retry_s, remaining)
        give_up = loop.time() + max(0.0, budget - 0.2)  # leave the caller time to hear why
        pause = 0.05
        while True:
            timeout = max(0.05, min(self.settings.accounts_timeout_s, give_up - loop.time()))
            try:
                await self.accounts.Commit(settle, timeout=timeout)
                count(_credits, amount / credits.MILLI, {"operation": "commit"})
                return
            except grpc.aio.AioRpcError as error:
                if error.code() not in RETRYABLE:
                    log.warning("commit refused (%s); the result is not handed over", error.code().name)
                    if error.code() == grpc.StatusCode.FAILED_PRECONDITION:  # the hold lapsed first
                        raise ServiceError(
                            grpc.StatusCode.ABORTED,
                            "the credits held for this request lapsed before its result was ready, so it was not "
                            "sent and nothing was charged; retry with the same idempotency key",
                            reason="RESERVATION_RELEASED",
                            retry_after_s=1.0,
                        ) from None
                    raise ServiceError.from_downstream(error, ACCOUNTS_UNAVAILABLE) from None
                if loop.time() + pause >= give_up:
                    log.warning(
                        "commit failed (%s) until the deadline; the result is not handed over", error.code().name
                    )
                    raise ServiceError(
                        grpc.StatusCode.UNAVAILABLE,
                        "the charge for this result could not be recorded (accounts unavailable), so it was not "
                        "sent and nothing was charged; retry with the same idempotency key",
                        reason="DEPENDENCY_UNAVAILABLE",
                        retry_after_s=1.0,
                    ) from None
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)

    async def _undo(
        self, settle: accounts_pb2.CommitRequest, amount: int, committing: asyncio.Task[None] | None = None
    ) -> None:
        """Releases a hold, or refunds it if its commit landed, retrying until accounts answers
        (up to settle_retry_s; past the hold's timeout accounts releases it by itself)."""
        if committing is not None:  # after the commit, so that the two never cross
            await asyncio.wait([committing])
        undo = accounts_pb2.ReleaseRequest(
            account_id=settle.account_id, reservation_id=settle.reservation_id, undelivered=True
        )
        failed = await retried(
            lambda: self.accounts.Release(undo, timeout=self.settings.accounts_timeout_s), self.settings.settle_retry_s
        )
        if failed is None:
            count(_credits, amount / credits.MILLI, {"operation": "release"})
        else:
            log.warning("release failed (%s); the hold lapses by itself", failed.name)

    async def _release_once_reserved(
        self, reserve: accounts_pb2.ReserveRequest, reserving: asyncio.Task[accounts_pb2.ReserveResponse]
    ) -> None:
        """Releases the hold a cancelled call's reservation made, once it is known."""
        try:
            reserved = await reserving
        except ServiceError:
            return  # nothing was reserved
        if reserved.outcome in OWNED:
            settle = accounts_pb2.CommitRequest(account_id=reserve.account_id, reservation_id=reserved.reservation_id)
            await self._undo(settle, reserve.amount_millicredits)


async def retried(call: Callable[[], Awaitable[object]], give_up_s: float) -> grpc.StatusCode | None:
    """Runs `call` until it answers, again with backoff (0.1 s, doubling to 5 s) while its error
    is RETRYABLE, for up to `give_up_s`: None once it succeeded, else the code it stopped on.
    For work that outlives its call (a release, a refund, the deletion of a kept result)."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + give_up_s
    pause = 0.1
    while True:
        try:
            await call()
            return None
        except grpc.aio.AioRpcError as error:
            if error.code() not in RETRYABLE or loop.time() + pause > give_up:
                return error.code()
        await asyncio.sleep(pause)
        pause = min(pause * 2, 5.0)


def new_key(idempotency_key: str) -> tuple[str, bool]:
    """The key to reserve under and whether the client gave it (without one the request cannot
    be retried safely, so it gets its own)."""
    return (idempotency_key, True) if idempotency_key else (secrets.token_urlsafe(18), False)
