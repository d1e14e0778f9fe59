"""How the gateway charges for work: reserve, commit before the result is handed over,
undo what was not handed over. Every result handed to a caller is charged exactly once.

- A request is validated before anything is reserved (a body that is no picture, or an
  impossible option, writes no ledger entry).
- A client's idempotency key is reserved before the work starts, so a replay never runs
  the model: a key another call holds is refused with ABORTED (IDEMPOTENCY_KEY_IN_USE,
  retry), a key already served and charged with ALREADY_EXISTS (ALREADY_SERVED). Without
  a key from the client the reservation runs beside the work (nothing can replay it).
- The commit comes before the hand-over and is retried while the call has time; a result
  whose charge cannot be recorded is not handed over (UNAVAILABLE, retry with the key).
- What was reserved and not handed over (any failure, a cancellation, a stream that ended
  before its item was written) is released, or refunded if its commit had landed, by a
  task that outlives the call and retries until accounts answers.
"""

from __future__ import annotations

import asyncio
import io
import logging
import secrets
from collections.abc import Awaitable, Callable, Coroutine
from datetime import timedelta
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message
from PIL import Image, UnidentifiedImageError

from cutout.v1 import accounts_pb2, erase_pb2, options_pb2
from services.common import credits
from services.common.errors import ServiceError, invalid_argument
from services.common.settings import API_KEY_METADATA
from services.common.tasks import start_kept
from services.common.telemetry import count, meter
from services.gateway.settings import GatewaySettings
from services.inference import imaging

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R", bound=Message)

_credits = meter.create_counter(
    "cutout.credits",
    description="Credits reserved, committed, released and refunded for removals and erasures, by operation",
)

# Outcomes under which this call holds the credits and must commit or release them.
OWNED = (accounts_pb2.RESERVE_OUTCOME_NEW, accounts_pb2.RESERVE_OUTCOME_DUPLICATE_RELEASED)
# What a failed accounts call may be retried on: it did not answer (or answered "busy").
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED)
# keep_ttl beyond this is nonsense whatever the plan (retention checks the plan's own cap).
MAX_KEEP_TTL = timedelta(days=3650)
ACCOUNTS_UNAVAILABLE = "the accounts service is unavailable; retry shortly"


class Handoff:
    """Whether a result was handed to the caller: set just before the bytes go to gRPC.

    From then on the caller may have it, so it stays charged even if the call ends now.
    """

    def __init__(self) -> None:
        self.handed = False


Deliver = Callable[[R, Handoff], Awaitable[None]]


# -- validation before reserving -------------------------------------------------------


def check_image(data: bytes, max_bytes: int, field: str = "image") -> None:
    """Refuses what is too large or no JPEG, PNG or WebP by its header (inference checks pixels)."""
    if not data:
        raise invalid_argument(f"{field} is empty; send the bytes of a JPEG, PNG or WebP file", field=field)
    if len(data) > max_bytes:
        raise invalid_argument(
            f"{field} is {len(data) / 2**20:.1f} MiB; the limit is {max_bytes / 2**20:.0f} MiB. Send a smaller file.",
            field=field,
            reason="IMAGE_TOO_LARGE",
        )
    try:
        with Image.open(io.BytesIO(data), formats=imaging.ACCEPTED_FORMATS):
            pass
    except UnidentifiedImageError:
        raise invalid_argument(
            f"{field} is not a JPEG, PNG or WebP file (its first bytes match none of them)", field=field
        ) from None
    except imaging.CORRUPT_DATA as error:
        raise invalid_argument(f"{field} header could not be read: {error}", field=field) from None


def check_removal(image: bytes, options: options_pb2.RemoveBackgroundOptions, max_bytes: int) -> None:
    """What a removal can be refused for without decoding a pixel: its options and image header."""
    imaging.OutputSpec.from_proto(options, imaging.EncoderDefaults())
    imaging.check_subject(options)
    if options.HasField("keep_ttl"):
        ttl = options.keep_ttl
        if ttl.seconds < 0 or ttl.nanos < 0 or (ttl.seconds == 0 and ttl.nanos == 0):
            raise invalid_argument(
                "keep_ttl must be positive; leave it unset for the default", field="options.keep_ttl"
            )
        if ttl.seconds > MAX_KEEP_TTL.total_seconds():
            raise invalid_argument(
                f"keep_ttl of {ttl.seconds} s is beyond any plan's limit; give at most {MAX_KEEP_TTL.days} days "
                "(your plan may allow less), or leave it unset for the default",
                field="options.keep_ttl",
            )
    if options.background_image:
        check_image(options.background_image, max_bytes, "options.background_image")
    check_image(image, max_bytes)


def check_erase(request: erase_pb2.EraseRegionsRequest, max_bytes: int) -> None:
    check_image(request.image, max_bytes)


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
            f"idempotency key {idempotency_key!r} was already served and charged; results are not stored "
            "unless keep_result is set (then ListResults has it), so it is not sent again. Use a new key "
            "for a new removal",
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
    ) -> R:
        """Settles a hold for a piece of work: the response, once it is charged (and handed over,
        with `deliver`); anything not handed over is released or refunded, and `discard` undoes
        what `finish` stored for it. Errors are raised as ServiceError (`unavailable` maps the
        work's own failures)."""
        settle = accounts_pb2.SettleRequest(account_id=reserve.account_id, reservation_id=reserved.reservation_id)
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

    async def _commit(self, context: grpc.aio.ServicerContext, settle: accounts_pb2.SettleRequest, amount: int) -> None:
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
        self, settle: accounts_pb2.SettleRequest, amount: int, committing: asyncio.Task[None] | None = None
    ) -> None:
        """Releases a hold, or refunds it if its commit landed, retrying until accounts answers
        (up to settle_retry_s; past the hold's timeout accounts releases it by itself)."""
        if committing is not None:  # after the commit, so that the two never cross
            await asyncio.wait([committing])
        undo = accounts_pb2.SettleRequest()
        undo.CopyFrom(settle)
        undo.undelivered = True
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.settings.settle_retry_s
        pause = 0.1
        while True:
            try:
                await self.accounts.Release(undo, timeout=self.settings.accounts_timeout_s)
                count(_credits, amount / credits.MILLI, {"operation": "release"})
                return
            except grpc.aio.AioRpcError as error:
                if error.code() not in RETRYABLE or loop.time() + pause > give_up:
                    log.warning("release failed (%s); the hold lapses by itself", error.code().name)
                    return
            await asyncio.sleep(pause)
            pause = min(pause * 2, 5.0)

    async def _release_once_reserved(
        self, reserve: accounts_pb2.ReserveRequest, reserving: asyncio.Task[accounts_pb2.ReserveResponse]
    ) -> None:
        """Releases the hold a cancelled call's reservation made, once it is known."""
        try:
            reserved = await reserving
        except ServiceError:
            return  # nothing was reserved
        if reserved.outcome in OWNED:
            settle = accounts_pb2.SettleRequest(account_id=reserve.account_id, reservation_id=reserved.reservation_id)
            await self._undo(settle, reserve.amount_millicredits)


def api_key(context: grpc.aio.ServicerContext) -> str:
    return dict(context.invocation_metadata() or ()).get(API_KEY_METADATA, "")


def new_key(idempotency_key: str) -> tuple[str, bool]:
    """The key to reserve under and whether the client gave it (without one the request cannot
    be retried safely, so it gets its own)."""
    return (idempotency_key, True) if idempotency_key else (secrets.token_urlsafe(18), False)
