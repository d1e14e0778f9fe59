"""The inference servicer: decode, batch into Triton, refine, composite, encode."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import grpc
from opentelemetry import trace
from PIL import Image

from cutout.v1 import inference_pb2, inference_pb2_grpc, options_pb2
from services.common.errors import ServiceError, abort
from services.common.server import ServiceSpec
from services.common.telemetry import meter, stage
from services.common.tls import Identity
from services.inference import imaging
from services.inference.batcher import Batcher
from services.inference.budget import PixelBudget
from services.inference.settings import InferenceSettings
from services.inference.triton import TritonModel

log = logging.getLogger(__name__)
T = TypeVar("T")

# Its rate is the images per second served.
_images = meter.create_counter("cutout.inference.images", description="Cut-outs produced")


class InferenceServicer(inference_pb2_grpc.InferenceServicer):
    def __init__(self, settings: InferenceSettings, model: TritonModel) -> None:
        self.settings = settings
        self.model = model
        self.batcher = Batcher(
            model.infer,
            max_batch_size=settings.max_batch_size,
            max_wait_s=settings.max_batch_wait_ms / 1000,
            max_queue=settings.max_queue,
            span_attributes={"cutout.model": settings.model_name},
        )
        self.limits = imaging.DecodeLimits(settings.max_image_bytes, settings.max_pixels)
        self.encoders = imaging.EncoderDefaults(
            compression_effort=settings.compression_effort,
            jpeg_quality=settings.jpeg_quality,
            webp_quality=settings.webp_quality,
        )
        self.pool = ThreadPoolExecutor(settings.cpu_workers, thread_name_prefix="pixels")
        self._in_pool = 0  # tasks submitted to `pool` and not finished
        # Parts of one picture's guided filter, run beside the pool thread that asked for
        # them, but only while nothing else is in the pool: under load the cores are taken
        # and splitting the work would only add thread switches.
        self.filter_helpers = ThreadPoolExecutor(settings.cpu_workers, thread_name_prefix="filter")
        self.pixel_budget = PixelBudget(settings.max_pixels_in_flight)

    async def _cpu(self, fn: Callable[..., T], *args: object) -> T:
        self._in_pool += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)
        finally:
            self._in_pool -= 1

    async def Segment(
        self, request: inference_pb2.SegmentRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.SegmentResponse:
        try:
            return await self._segment(request)
        except ServiceError as error:
            log.info("Segment refused: %s (%s)", error.code.name, error.reason or "")
            await abort(context, error)

    async def _segment(self, request: inference_pb2.SegmentRequest) -> inference_pb2.SegmentResponse:
        started = time.perf_counter()
        timings = options_pb2.StageTimings()
        # Options first: a wrong option costs no decoding and no model time.
        spec = imaging.OutputSpec.from_proto(request.options, self.encoders)
        header = await self._cpu(imaging.open_image, request.image, self.limits)
        width, height = header.size
        async with self.pixel_budget.hold(width * height):
            return await self._process(header, spec, timings, started)

    async def _process(
        self, header: Image.Image, spec: imaging.OutputSpec, timings: options_pb2.StageTimings, started: float
    ) -> inference_pb2.SegmentResponse:
        with self.batcher.arriving():
            with _stage(timings, "decode"):
                image = await self._cpu(imaging.decode_pixels, header)
            side = self.settings.model_input_size
            with _stage(timings, "preprocess"):
                tensor = await self._cpu(imaging.model_input, image, (side, side))

        with stage("batch") as span:
            batched = await self.batcher.submit(tensor)
            span.set_attribute("cutout.batch_size", batched.batch_size)
        timings.batch_wait_ms = batched.wait_s * 1000
        timings.model_ms = batched.model_s * 1000
        timings.batch_size = batched.batch_size

        with _stage(timings, "postprocess"):
            helpers = self.filter_helpers if self._in_pool == 0 else None
            alpha = await self._cpu(functools.partial(imaging.refine_mask, helpers=helpers), image, batched.output)
            fraction = await self._cpu(imaging.foreground_fraction, alpha)

        format_name = options_pb2.OutputFormat.Name(spec.format)
        with _stage(timings, "encode") as span:
            span.set_attribute("cutout.output_format", format_name)
            rendered = await self._cpu(imaging.render, image, alpha, spec)
        timings.total_ms = _ms_since(started)
        _images.add(1, {"cutout.output_format": format_name})
        return inference_pb2.SegmentResponse(
            result=options_pb2.CutoutImage(
                image=rendered.data,
                media_type=rendered.media_type,
                width=rendered.width,
                height=rendered.height,
                foreground_fraction=fraction,
            ),
            timings=timings,
        )

    async def close(self) -> None:
        await self.batcher.close()
        await self.model.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.filter_helpers.shutdown(wait=False, cancel_futures=True)


def _ms_since(mark: float) -> float:
    return (time.perf_counter() - mark) * 1000


@contextlib.contextmanager
def _stage(timings: options_pb2.StageTimings, name: str) -> Iterator[trace.Span]:
    """One stage of the work: a child span, and its time in `timings.<name>_ms`."""
    mark = time.perf_counter()
    with stage(name) as span:
        yield span
    setattr(timings, f"{name}_ms", _ms_since(mark))


def build(settings: InferenceSettings) -> ServiceSpec:
    tls = None
    if settings.mesh_ca_file and settings.mesh_cert_file and settings.mesh_key_file:
        tls = Identity("inference", settings.mesh_cert_file, settings.mesh_key_file, settings.mesh_ca_file)
    model = TritonModel(settings.triton_url, settings.model_name, settings.triton_timeout_s, tls=tls)
    servicer = InferenceServicer(settings, model)
    return ServiceSpec(
        service_names=[inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name],
        register=lambda server: inference_pb2_grpc.add_InferenceServicer_to_server(servicer, server),
        ready=model.ready,
        close=servicer.close,
    )
