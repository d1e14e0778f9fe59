"""The gateway's calls to inference, accounts and retention: channels, deadlines, readiness.

Every outgoing call gets the smaller of its own bound and the caller's remaining time, and
a downstream's failure comes back as a ServiceError (services/common/errors.py decides what
the public caller may see of it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cutout.v1 import (
    accounts_pb2,
    accounts_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    retention_pb2,
    retention_pb2_grpc,
)
from services.common.channels import mesh_channel
from services.common.errors import ServiceError
from services.common.metadata import single_value
from services.common.settings import API_KEY_METADATA
from services.gateway.admission import admitted_caller
from services.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

INFERENCE_SERVICE = inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name
INFERENCE_UNAVAILABLE = "the inference service is unavailable; retry shortly"
ACCOUNTS_SERVICE = accounts_pb2.DESCRIPTOR.services_by_name["Accounts"].full_name
ACCOUNTS_UNAVAILABLE = "the accounts service is unavailable; retry shortly"
RETENTION_SERVICE = retention_pb2.DESCRIPTOR.services_by_name["Retention"].full_name
RETENTION_UNAVAILABLE = "the retention service is unavailable; retry shortly"


def api_key(context: grpc.aio.ServicerContext) -> str:
    return single_value(context.invocation_metadata(), API_KEY_METADATA)  # one, or INVALID_ARGUMENT


def inference_error(error: grpc.aio.AioRpcError) -> ServiceError:
    return ServiceError.from_downstream(error, INFERENCE_UNAVAILABLE)


class Downstreams:
    """Channels to inference, accounts and retention, shared by every part of the gateway."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.inference_channel = mesh_channel(settings.inference_target, settings, settings.max_message_bytes)
        self.inference = inference_pb2_grpc.InferenceStub(self.inference_channel)
        self.accounts_channel = mesh_channel(settings.accounts_target, settings)
        self.accounts = accounts_pb2_grpc.AccountsStub(self.accounts_channel)
        self.retention_channel = mesh_channel(settings.retention_target, settings, settings.max_message_bytes)
        self.retention = retention_pb2_grpc.RetentionStub(self.retention_channel)
        # Which dependencies answered their last health check (ready() updates it).
        self.live = {"inference": True, "accounts": True, "retention": True}

    async def authenticate(self, api_key: str, context: grpc.aio.ServicerContext) -> accounts_pb2.AuthenticateResponse:
        """The account behind an API key; its errors (UNAUTHENTICATED, ...) raised as ServiceError."""
        return await self.accounts_call(
            context, self.accounts.Authenticate, accounts_pb2.AuthenticateRequest(api_key=api_key)
        )

    async def caller(
        self, context: grpc.aio.ServicerContext, *, fresh: bool = False
    ) -> accounts_pb2.AuthenticateResponse:
        """The caller, as admission found it (services/gateway/admission.py), or asked again."""
        admitted = admitted_caller.get()
        if admitted is not None and not fresh:
            return admitted
        return await self.authenticate(api_key(context), context)

    def deadline(self, context: grpc.aio.ServicerContext, bound: float) -> float:
        """An outgoing call's timeout: our bound, or less if the caller has less left."""
        remaining = context.time_remaining()
        return bound if remaining is None else max(0.0, min(bound, remaining))

    async def accounts_call(
        self,
        context: grpc.aio.ServicerContext,
        method: Callable[..., Awaitable[Any]],
        request: object,
        forward: tuple[str, ...] = (),
        extra_metadata: tuple[tuple[str, str], ...] = (),
    ) -> Any:
        """Calls accounts, forwarding the named metadata entries of the caller's (and adding
        `extra_metadata`); its errors are raised as ServiceError."""
        metadata = [(key, value) for key, value in context.invocation_metadata() or () if key in forward]
        metadata.extend(extra_metadata)
        return await self._call(
            context, method, request, self.settings.accounts_timeout_s, ACCOUNTS_UNAVAILABLE, metadata
        )

    async def retention_call(
        self, context: grpc.aio.ServicerContext, method: Callable[..., Awaitable[Any]], request: object
    ) -> Any:
        """Calls retention; its errors are raised as ServiceError."""
        return await self._call(context, method, request, self.settings.retention_timeout_s, RETENTION_UNAVAILABLE)

    async def _call(
        self,
        context: grpc.aio.ServicerContext,
        method: Callable[..., Awaitable[Any]],
        request: object,
        bound_s: float,
        unavailable: str,
        metadata: list[tuple[str, str]] | None = None,
    ) -> Any:
        try:
            return await method(request, metadata=metadata or [], timeout=self.deadline(context, bound_s))
        except grpc.aio.AioRpcError as error:
            raise ServiceError.from_downstream(error, unavailable) from None

    async def ready(self) -> bool:
        """The gateway's own readiness: always, once it runs. It serves what its live
        dependencies allow (removals without retention; fetches by token without accounts),
        so an outage behind it never takes it out of rotation; what cannot be served now is
        refused with UNAVAILABLE. Each round notes which dependencies answer (`live`)."""
        checks = await asyncio.gather(
            self._serving(self.inference_channel, INFERENCE_SERVICE),
            self._serving(self.accounts_channel, ACCOUNTS_SERVICE),
            self._serving(self.retention_channel, RETENTION_SERVICE),
        )
        changed = {name: ok for name, ok in zip(self.live, checks, strict=True) if self.live[name] != ok}
        for name, ok in changed.items():
            log.warning("dependency %s is %s", name, "back" if ok else "unavailable")
        self.live.update(changed)
        return True

    async def _serving(self, channel: grpc.aio.Channel, service: str) -> bool:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=self.settings.health_check_timeout_s
            )
        except grpc.aio.AioRpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    async def close(self) -> None:
        await self.inference_channel.close()
        await self.accounts_channel.close()
        await self.retention_channel.close()
