"""Fair shares in front of gRPC's own concurrent-call limit, for a listener whose calls are
small and unary (the admin listener).

gRPC counts a call against `maximum_concurrent_rpcs` from its headers on, and runs a unary
handler only once the request message has come: a caller that sends headers and never the
body holds a slot for as long as it likes, and a handful of them fill the listener, after
which everyone gets gRPC's bare "Concurrent RPC limit exceeded!". Here each unary call is
read as a stream: its message must arrive within `arrival_s`; a caller the listener knows
(`known`: a named admin's token) holds at most `per_owner` calls at once, as does each source
address for everyone else, and everyone else together at most `unknown_total`, so that
strangers, header-only or not, always leave the rest to the callers it knows. More are
refused at once, with RetryInfo.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from services.common.errors import ServiceError, abort
from services.common.limits import Budget, Refused


def peer_address(context: grpc.aio.ServicerContext) -> str:
    """The caller's address without its port ("ipv4:1.2.3.4:5" -> "1.2.3.4")."""
    peer = context.peer() or ""
    kind, _, rest = peer.partition(":")
    return rest.rsplit(":", 1)[0] if kind in ("ipv4", "ipv6") else peer


Known = Callable[[tuple[tuple[str, str | bytes], ...]], str | None]


class ArrivalGuard(grpc.aio.ServerInterceptor):
    def __init__(self, arrival_s: float, per_owner: int, unknown_total: int, known: Known) -> None:
        self.arrival_s = arrival_s
        self.known = known  # the caller's name from its metadata, or None for a stranger
        self.per_owner = Budget(per_owner, "calls in flight from this caller")
        self.unknown = Budget(unknown_total, "calls in flight from callers without a known credential")

    async def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        handler = await continuation(handler_call_details)
        if handler is None or not handler.unary_unary:
            return handler
        unary: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]] = handler.unary_unary
        name = self.known(tuple(handler_call_details.invocation_metadata or ()))

        async def guarded(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            owner = f"known:{name}" if name is not None else f"source:{peer_address(context)}"
            try:
                self.per_owner.acquire(owner)
                if name is None:
                    try:
                        self.unknown.acquire()
                    except Refused:
                        self.per_owner.release(owner)
                        raise
            except Refused as error:
                await abort(
                    context,
                    ServiceError(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"too many {error.what}; retry in a second",
                        reason="TOO_MANY_CALLS_IN_FLIGHT",
                        quota_subject=error.what,
                        retry_after_s=error.retry_after_s,
                    ),
                )
            try:
                request = await self._first(requests, context)
                return await unary(request, context)
            finally:
                self.per_owner.release(owner)
                if name is None:
                    self.unknown.release()

        return grpc.stream_unary_rpc_method_handler(
            guarded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    async def _first(self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
        try:
            async with asyncio.timeout(self.arrival_s):
                async for request in requests:
                    return request
        except TimeoutError:
            pass
        await abort(
            context,
            ServiceError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"the request did not arrive within {self.arrival_s:.0f}s of the call's start",
                reason="REQUEST_TOO_SLOW",
            ),
        )
