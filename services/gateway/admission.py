"""Who gets in, before any work: the public port's limits, applied as each call arrives.

A call with an API key is authenticated from its metadata before its request message is
read, then counted against its key's rate and its key's calls in flight; a call without
a key (sign-up, a login with a password, a fetch by token, administration) takes a slot
of a small budget of its own, so that callers without a key, or that send headers and
never a message, cannot use up the server for those with one. Refusals are
RESOURCE_EXHAUSTED with a google.rpc.RetryInfo; a bad key is refused before its upload.
Unary handlers are served in streaming form for this (the same bytes on the wire),
because grpc runs a unary handler only once the whole message has arrived.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import inspect
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import grpc

from cutout.v1 import accounts_pb2
from services.common.errors import ServiceError, abort
from services.common.limits import Budget, Refused, rate_limiter
from services.common.metadata import repeated_credential, repeated_error, single_value
from services.common.settings import API_KEY_METADATA
from services.common.telemetry import exclude_from_stats
from services.gateway.settings import GatewaySettings

# The caller authenticated at admission, for the handler of the same call.
admitted_caller: contextvars.ContextVar[accounts_pb2.AuthenticateResponse | None] = contextvars.ContextVar(
    "admitted_caller", default=None
)

Authenticate = Callable[[str, grpc.aio.ServicerContext], Awaitable[accounts_pb2.AuthenticateResponse]]
# The calls whose handler reserves credits with AuthorizeAndReserve, which looks the key up
# again: admission may let them in on a recent answer (RecentKeys). Every other call with a
# key is authenticated afresh, since nothing downstream would look at the key again.
CHARGED_METHODS = (
    "/cutout.v1.Cutout/RemoveBackground",
    "/cutout.v1.Cutout/EraseRegions",
    "/cutout.v1.Cutout/RemoveBackgroundStream",
)
# Calls that change what a remembered answer says about its account (restriction,
# objection to statistics, the account itself): once one succeeds, that account's
# remembered answers are forgotten, so the next charged call asks accounts again.
# (Another gateway replica may go on with its own for up to ADMITTED_KEY_TTL_S.)
ACCOUNT_CHANGING_METHODS = (
    "/cutout.v1.Cutout/UpdateProfile",
    "/cutout.v1.Cutout/ChangeEmail",
    "/cutout.v1.Cutout/DeleteAccount",
    "/cutout.v1.Cutout/RevokeApiKey",
)


class RecentKeys:
    """Accounts' recent answers for API keys that it accepted, by the key's sha256, for `ttl_s`.

    Only acceptances are kept: an unknown or revoked key is asked about every time, and so
    is refused before its upload."""

    def __init__(self, ttl_s: float, capacity: int) -> None:
        self.ttl_s = ttl_s
        self.capacity = capacity
        self._answers: OrderedDict[bytes, tuple[float, accounts_pb2.AuthenticateResponse]] = OrderedDict()

    @staticmethod
    def _digest(api_key: str) -> bytes:
        return hashlib.sha256(api_key.encode()).digest()

    def get(self, api_key: str) -> accounts_pb2.AuthenticateResponse | None:
        digest = self._digest(api_key)
        entry = self._answers.get(digest)
        if entry is None:
            return None
        if time.monotonic() - entry[0] > self.ttl_s:
            del self._answers[digest]
            return None
        return entry[1]

    def forget_account(self, account_id: str) -> None:
        for digest in [d for d, (_, caller) in self._answers.items() if caller.account_id == account_id]:
            del self._answers[digest]

    def put(self, api_key: str, caller: accounts_pb2.AuthenticateResponse) -> None:
        if self.ttl_s <= 0:
            return
        digest = self._digest(api_key)
        self._answers[digest] = (time.monotonic(), caller)
        self._answers.move_to_end(digest)
        while len(self._answers) > self.capacity:
            self._answers.popitem(last=False)


def source_address(context: grpc.aio.ServicerContext) -> str:
    """The caller's IP address ("ipv4:1.2.3.4:5678" -> "1.2.3.4"; IPv6 by its /64)."""
    peer = context.peer() or ""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6":
        address = rest.rsplit(":", 1)[0].strip("[]")
        return ":".join(address.split(":")[:4]) + "::/64"
    return rest.rsplit(":", 1)[0] if kind == "ipv4" else peer


def refused(error: Refused, reason: str) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"too many {error.what}; retry in {error.retry_after_s:.1f}s",
        reason=reason,
        quota_subject=error.what,
        retry_after_s=error.retry_after_s,
    )


class Admission(grpc.aio.ServerInterceptor):
    def __init__(self, settings: GatewaySettings, services: Sequence[str], authenticate: Authenticate) -> None:
        self.settings = settings
        self.guarded = tuple(f"/{name}/" for name in services)
        self.authenticate = authenticate
        self.recent_keys = RecentKeys(settings.admitted_key_ttl_s, settings.admitted_keys)
        self.without_key = Budget(settings.calls_without_key, "calls without an API key in flight on this gateway")
        self.without_key_per_source = Budget(
            settings.calls_without_key_per_source, "calls without an API key in flight from this address"
        )
        self.per_key = Budget(settings.calls_per_key, "calls in flight for this API key")
        self.per_account = Budget(settings.calls_per_account, "calls in flight for this account, over all its keys")
        # Load shedding: the work this gateway has started and not finished, over every key.
        # Past it a call is refused at once (RESOURCE_EXHAUSTED, RetryInfo) rather than queued
        # behind the others, so admitted calls keep their latency and memory stays bounded.
        self.work = Budget(
            settings.work_in_flight, "removals and erasures in flight on this gateway", settings.overload_retry_after_s
        )
        self.work_of_account = Budget(
            settings.work_per_account,
            "removals and erasures in flight on this gateway for this account",
            settings.overload_retry_after_s,
        )
        self.rate = rate_limiter(
            settings.redis_url, settings.key_rate_per_s, settings.key_rate_burst, "calls per second for this API key"
        )
        # Calls without a key are sign-ups, password logins and token fetches: what is
        # guessed or farmed, so each source address has a slow rate.
        self.source_rate = rate_limiter(
            settings.redis_url,
            settings.source_rate_per_s,
            settings.source_rate_burst,
            "calls without an API key per second from this address",
        )

    async def _admit(
        self, context: grpc.aio.ServicerContext, api_key: str, charged: bool, refusal: ServiceError | None = None
    ) -> Callable[[], None]:
        """Counts the call in; returns what counts it out. Aborts the call if refused (with
        `refusal`, at once). `charged`: the call's handler looks its key up again (CHARGED_METHODS)."""
        if refusal is not None:
            await abort(context, refusal)
        if not api_key:
            if charged:  # an image call needs a key: refused before its body is read
                await abort(
                    context,
                    ServiceError(
                        grpc.StatusCode.UNAUTHENTICATED,
                        f"this call needs an API key in the `{API_KEY_METADATA}` metadata; create one with "
                        "`cutout keys create` (or CreateApiKey with your e-mail and password). Nothing was read "
                        "or charged",
                        reason="API_KEY_MISSING",
                    ),
                )
            source = source_address(context)
            try:
                await self.source_rate.take(source)
            except Refused as error:
                await abort(context, refused(error, "SOURCE_RATE_LIMITED"))
            try:
                self.without_key_per_source.acquire(source)
            except Refused as error:
                await abort(context, refused(error, "TOO_MANY_CALLS_WITHOUT_KEY"))
            try:
                self.without_key.acquire()
            except Refused as error:
                self.without_key_per_source.release(source)
                await abort(context, refused(error, "TOO_MANY_CALLS_WITHOUT_KEY"))

            def release_keyless() -> None:
                self.without_key.release()
                self.without_key_per_source.release(source)

            return release_keyless
        caller = self.recent_keys.get(api_key) if charged else None
        if caller is None:
            try:
                caller = await self.authenticate(api_key, context)
            except ServiceError as error:
                await abort(context, error)
            self.recent_keys.put(api_key, caller)
        try:
            await self.rate.take(caller.key_id)
        except Refused as error:
            await abort(context, refused(error, "RATE_LIMITED"))
        try:
            self.per_key.acquire(caller.key_id)
        except Refused as error:
            await abort(context, refused(error, "TOO_MANY_CALLS_IN_FLIGHT"))
        try:
            self.per_account.acquire(caller.account_id)
        except Refused as error:
            self.per_key.release(caller.key_id)
            await abort(context, refused(error, "TOO_MANY_CALLS_IN_FLIGHT"))
        if charged:
            try:
                self.work_of_account.acquire(caller.account_id)
            except Refused as error:
                self.per_account.release(caller.account_id)
                self.per_key.release(caller.key_id)
                await abort(context, refused(error, "OVERLOADED"))
            try:
                self.work.acquire()
            except Refused as error:
                self.work_of_account.release(caller.account_id)
                self.per_account.release(caller.account_id)
                self.per_key.release(caller.key_id)
                await abort(context, refused(error, "OVERLOADED"))
        admitted_caller.set(caller)
        if caller.usage_stats_opt_out:  # objection: this call, and what it causes downstream, counts nowhere
            exclude_from_stats()

        def release() -> None:
            self.per_key.release(caller.key_id)
            self.per_account.release(caller.account_id)
            if charged:
                self.work.release()
                self.work_of_account.release(caller.account_id)

        return release

    async def _first(self, requests: AsyncIterator[object], context: grpc.aio.ServicerContext) -> object:
        """The one request message of a unary call, within the time allowed for it to arrive."""
        try:
            async with asyncio.timeout(self.settings.request_arrival_s):
                async for request in requests:
                    return request
        except TimeoutError:
            pass
        await abort(
            context,
            ServiceError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"the request did not arrive within {self.settings.request_arrival_s:.0f}s of the call's start",
                reason="REQUEST_TOO_SLOW",
            ),
        )

    async def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        handler = await continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(self.guarded):
            return handler
        # A credential sent twice is refused before anything reads either value.
        repeated = repeated_credential(handler_call_details.invocation_metadata)
        refusal = None if repeated is None else repeated_error(repeated)
        api_key = "" if refusal else single_value(handler_call_details.invocation_metadata, API_KEY_METADATA)
        charged = handler_call_details.method in CHARGED_METHODS
        options = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }

        if handler.unary_unary:
            unary_unary = handler.unary_unary

            changes_account = handler_call_details.method in ACCOUNT_CHANGING_METHODS

            async def stream_unary(requests, context):  # type: ignore[no-untyped-def]
                release = await self._admit(context, api_key, charged, refusal)
                try:
                    response = await unary_unary(await self._first(requests, context), context)
                    caller = admitted_caller.get()
                    if changes_account and caller is not None:
                        self.recent_keys.forget_account(caller.account_id)
                    return response
                finally:
                    release()

            return grpc.stream_unary_rpc_method_handler(stream_unary, **options)
        if handler.unary_stream:
            unary_stream = handler.unary_stream

            async def stream_stream_from_unary(requests, context):  # type: ignore[no-untyped-def]
                release = await self._admit(context, api_key, charged, refusal)
                try:
                    async for response in unary_stream(await self._first(requests, context), context):
                        yield response
                finally:
                    release()

            return grpc.stream_stream_rpc_method_handler(stream_stream_from_unary, **options)
        if handler.stream_stream and inspect.isasyncgenfunction(handler.stream_stream):
            yielding = handler.stream_stream

            async def admitted_generator(requests, context):  # type: ignore[no-untyped-def]
                release = await self._admit(context, api_key, charged, refusal)
                try:
                    async for response in yielding(requests, context):
                        yield response
                finally:
                    release()

            return grpc.stream_stream_rpc_method_handler(admitted_generator, **options)
        if handler.stream_stream:
            writing = handler.stream_stream  # a handler that writes with context.write()

            async def admitted_writer(requests, context):  # type: ignore[no-untyped-def]
                release = await self._admit(context, api_key, charged, refusal)
                try:
                    return await writing(requests, context)
                finally:
                    release()

            return grpc.stream_stream_rpc_method_handler(admitted_writer, **options)
        return handler  # no stream-unary methods on the public port
