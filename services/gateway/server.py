"""The public servicer cutout.v1.Cutout: checks what it owns, forwards the pixels to inference."""

from __future__ import annotations

import logging
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cutout.v1 import cutout_pb2, cutout_pb2_grpc, inference_pb2, inference_pb2_grpc
from services.common.channels import insecure_channel
from services.common.errors import ServiceError, abort, relay
from services.common.server import ServiceSpec
from services.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

INFERENCE_SERVICE = inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name


class CutoutServicer(cutout_pb2_grpc.CutoutServicer):
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.inference_channel = insecure_channel(settings.inference_target, settings.max_message_bytes)
        self.inference = inference_pb2_grpc.InferenceStub(self.inference_channel)
        self.inference_health = health_pb2_grpc.HealthStub(self.inference_channel)

    async def RemoveBackground(
        self, request: cutout_pb2.RemoveBackgroundRequest, context: grpc.aio.ServicerContext
    ) -> cutout_pb2.RemoveBackgroundResponse:
        started = time.perf_counter()
        if request.options.keep_result:
            await abort(
                context,
                ServiceError(
                    grpc.StatusCode.UNIMPLEMENTED,
                    "keeping results is not available on this deployment yet; leave options.keep_result unset",
                    reason="KEEP_NOT_AVAILABLE",
                ),
            )
        try:
            segmented = await self.inference.Segment(
                inference_pb2.SegmentRequest(image=request.image, options=request.options),
                timeout=self._deadline(context),
            )
        except grpc.aio.AioRpcError as error:
            log.info("RemoveBackground failed downstream: %s", error.code().name)
            await relay(context, error, "the inference service is unavailable; retry shortly")
        timings = segmented.timings
        timings.total_ms = (time.perf_counter() - started) * 1000
        return cutout_pb2.RemoveBackgroundResponse(result=segmented.result, timings=timings)

    def _deadline(self, context: grpc.aio.ServicerContext) -> float:
        """The outgoing call's timeout: our bound, or less if the caller has less left."""
        remaining = context.time_remaining()
        bound = self.settings.inference_timeout_s
        return bound if remaining is None else max(0.0, min(bound, remaining))

    async def inference_ready(self) -> bool:
        try:
            reply = await self.inference_health.Check(
                health_pb2.HealthCheckRequest(service=INFERENCE_SERVICE),
                timeout=self.settings.health_check_timeout_s,
            )
        except grpc.aio.AioRpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    async def close(self) -> None:
        await self.inference_channel.close()


def build(settings: GatewaySettings) -> ServiceSpec:
    servicer = CutoutServicer(settings)
    return ServiceSpec(
        service_names=[cutout_pb2.DESCRIPTOR.services_by_name["Cutout"].full_name],
        register=lambda server: cutout_pb2_grpc.add_CutoutServicer_to_server(servicer, server),
        ready=servicer.inference_ready,
        close=servicer.close,
    )
