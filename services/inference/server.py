"""The inference servicer: decode, batch into Triton, refine, composite, encode."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import grpc
import numpy as np
from opentelemetry import trace
from PIL import Image

from cutout.v1 import erase_pb2, inference_pb2, inference_pb2_grpc, options_pb2
from services.common import output_spec
from services.common.errors import ServiceError
from services.common.server import ServiceSpec
from services.common.telemetry import count, meter, stage, tracer
from services.common.tls import Identity
from services.inference import detail, imaging, inpainting
from services.inference.models import ModelCatalog, ServedModel, looks_like_person, mask_confidence
from services.inference.pixel_budget import PixelBudget
from services.inference.settings import InferenceSettings
from services.inference.triton import TritonInpainter

log = logging.getLogger(__name__)
T = TypeVar("T")

# Its rate is the images per second served.
_images = meter.create_counter("cutout.inference.images", description="Cut-outs produced")
Subject = options_pb2.Subject
_erased = meter.create_counter("cutout.inference.erased", description="Pictures with marked regions filled")


class InferenceServicer(inference_pb2_grpc.InferenceServicer):
    def __init__(
        self, settings: InferenceSettings, catalog: ModelCatalog, inpainter: TritonInpainter | None = None
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.inpainter = inpainter
        self.limits = imaging.DecodeLimits(settings.max_image_bytes, settings.max_pixels)
        self.encoders = output_spec.EncoderDefaults(
            compression_effort=settings.compression_effort,
            jpeg_quality=settings.jpeg_quality,
            webp_quality=settings.webp_quality,
        )
        self.pool = ThreadPoolExecutor(settings.cpu_workers, thread_name_prefix="pixels")
        self._in_pool = 0  # tasks submitted to `pool` and not finished
        self.matte = detail.bounded_matte(settings)
        self.pixel_budget = PixelBudget(settings.max_pixels_in_flight)

    async def _cpu(self, fn: Callable[..., T], *args: object) -> T:
        self._in_pool += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)
        finally:
            self._in_pool -= 1

    async def ListModels(
        self, request: inference_pb2.InferenceListModelsRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.InferenceListModelsResponse:
        return inference_pb2.InferenceListModelsResponse(models=await self.catalog.listing())

    async def Segment(
        self, request: inference_pb2.SegmentRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.SegmentResponse:
        return await self._segment(request)  # errors: services/common/errors.py's boundary

    async def _segment(self, request: inference_pb2.SegmentRequest) -> inference_pb2.SegmentResponse:
        started = time.perf_counter()
        timings = options_pb2.StageTimings()
        # Options first: a wrong option costs no decoding and no model time.
        spec = output_spec.OutputSpec.from_proto(request.options, self.encoders)
        model, fallback, level = await self._models_for(request.options)
        # AUTO at a level that runs the general model at once still says what it saw.
        auto = (request.options.subject or Subject.SUBJECT_AUTO) == Subject.SUBJECT_AUTO
        classify = auto and not request.options.model and not level.person_first
        if level.clean_edges and spec.format != options_pb2.OUTPUT_FORMAT_MASK:
            spec = dataclasses.replace(spec, clean_edges=True)
        header = await self._cpu(imaging.open_image, request.image, self.limits)
        backdrop = None
        if spec.background_image:
            backdrop = await self._cpu(self._open_background, request.options.background_image)
        width, height = header.size
        pixels = width * height + (backdrop.width * backdrop.height if backdrop is not None else 0)
        async with self.pixel_budget.hold(pixels):
            return await self._process(header, backdrop, spec, model, fallback, level, classify, timings, started)

    def _open_background(self, data: bytes) -> Image.Image:
        try:
            return imaging.open_image(data, self.limits)
        except ServiceError as error:  # the same checks as the image, said of the right field
            raise ServiceError(
                error.code, f"background_image: {error.message}", reason=error.reason, field="options.background_image"
            ) from None

    async def _models_for(
        self, options: options_pb2.RemoveBackgroundOptions
    ) -> tuple[ServedModel, str | None, detail.Level]:
        """The model to run first, the model AUTO falls back to when the first finds no
        person, and the detail level (services/inference/detail.py)."""
        output_spec.check_subject(options)
        subject = options.subject or Subject.SUBJECT_AUTO
        level = detail.level(options, self.settings)
        if options.model:
            return await self.catalog.get(options.model), None, level
        if subject == Subject.SUBJECT_ANY or (subject == Subject.SUBJECT_AUTO and not level.person_first):
            return await self.catalog.get(level.general_model), None, level
        person = await self.catalog.get(self.settings.person_model)
        return person, (level.general_model if subject == Subject.SUBJECT_AUTO else None), level

    async def _run_model(self, model: ServedModel, tensor: np.ndarray, timings: options_pb2.StageTimings) -> np.ndarray:
        """One image through a model's batcher: its foreground probability at the model's size."""
        with stage("batch") as span:
            span.set_attribute("cutout.model", model.profile.name)
            batched = await model.batcher.submit(tensor)
            span.set_attribute("cutout.batch_size", batched.batch_size)
        timings.batch_wait_ms += batched.wait_s * 1000
        timings.model_ms += batched.model_s * 1000
        timings.batch_size = batched.batch_size
        # A few hundred thousand floats at most: cheaper here than a trip to the pool.
        return model.profile.probability(batched.output)

    async def _detected_subject(self, model: ServedModel, prepared: imaging.Prepared, classify: bool) -> int:
        """PERSON when the person model cut the picture out or, with `classify`, when its mask
        of the picture looks like a portrait (AUTO's rule; a few ms of model time); else ANY."""
        if model.profile.name == self.settings.person_model:
            return Subject.SUBJECT_PERSON
        if not classify:
            return Subject.SUBJECT_ANY
        person = await self.catalog.get(self.settings.person_model)
        tensor = await self._cpu(person.profile.tensor, prepared.looked_at)
        probability = await self._run_model(person, tensor, options_pb2.StageTimings())
        portrait = looks_like_person(probability, self.catalog.person_rule)
        return Subject.SUBJECT_PERSON if portrait else Subject.SUBJECT_ANY

    async def _process(
        self,
        header: Image.Image,
        backdrop: Image.Image | None,
        spec: output_spec.OutputSpec,
        model: ServedModel,
        fallback: str | None,
        level: detail.Level,
        classify: bool,
        timings: options_pb2.StageTimings,
        started: float,
    ) -> inference_pb2.SegmentResponse:
        # Each request crosses into the pixel pool twice: everything before the model in
        # one call, everything after it in another (each crossing costs a thread switch
        # and a trip through the event loop, which serves every other request too).
        stages = imaging.Stages()
        with model.batcher.arriving():
            prepared = await self._cpu(imaging.prepare, header, spec, model.profile, backdrop, stages)
        _record(stages, timings)
        probability = await self._run_model(model, prepared.tensor, timings)
        if fallback is not None and not looks_like_person(probability, self.catalog.person_rule):
            model = await self.catalog.get(fallback)
            with _stage(timings, "preprocess"):
                tensor = await self._cpu(model.profile.tensor, prepared.looked_at)
            probability = await self._run_model(model, tensor, timings)
        subject = await self._detected_subject(model, prepared, classify)

        format_name = options_pb2.OutputFormat.Name(spec.format)
        stages = imaging.Stages()
        matte = self.matte if level.matting else None
        rendered, fraction = await self._cpu(imaging.finish, prepared, probability, spec, matte, stages)
        _record(stages, timings, {"cutout.output_format": format_name})
        timings.total_ms = _ms_since(started)
        count(_images, 1, {"cutout.output_format": format_name})
        return inference_pb2.SegmentResponse(
            result=options_pb2.CutoutImage(
                image=rendered.data,
                media_type=rendered.media_type,
                width=rendered.width,
                height=rendered.height,
                foreground_fraction=fraction,
                model=model.profile.name,
                foreground_box=_rect(rendered.foreground_box),
                alpha_image=rendered.alpha_data,
                size=options_pb2.SIZE_PREVIEW if spec.size == options_pb2.SIZE_PREVIEW else options_pb2.SIZE_FULL,
                subject=subject,
                confidence=mask_confidence(probability),
            ),
            timings=timings,
        )

    async def Erase(
        self, request: inference_pb2.EraseRequest, context: grpc.aio.ServicerContext
    ) -> erase_pb2.EraseRegionsResponse:
        return await self._erase(request)

    async def _erase(self, request: inference_pb2.EraseRequest) -> erase_pb2.EraseRegionsResponse:
        started = time.perf_counter()
        timings = options_pb2.StageTimings()
        spec = inpainting.EraseSpec.from_proto(request.regions.options, self.settings.jpeg_quality)
        header = await self._cpu(imaging.open_image, request.image, self.limits)
        width, height = header.size
        async with self.pixel_budget.hold(width * height):
            with _stage(timings, "decode"):
                picture = await self._cpu(inpainting.decode_picture, header)
                marked = await self._cpu(inpainting.marks, request.regions, picture.size, self.limits)
            with _stage(timings, "postprocess") as span:
                filled, regions = await self._fill(picture.rgb, marked, spec.method)
                span.set_attribute("cutout.erase.regions", len(regions))
            with _stage(timings, "encode"):
                encoded = await self._cpu(inpainting.encode, picture, filled, spec.format, spec.quality)
        timings.total_ms = _ms_since(started)
        count(_erased, 1, {"cutout.erase.format": erase_pb2.EraseFormat.Name(spec.format)})
        return erase_pb2.EraseRegionsResponse(
            result=options_pb2.CutoutImage(
                image=encoded.data,
                media_type=encoded.media_type,
                width=picture.size[0],
                height=picture.size[1],
                foreground_fraction=float(marked.mean()),
            ),
            timings=timings,
            regions=[
                erase_pb2.ErasedRegion(
                    bounds=erase_pb2.Box(x=r.box[0], y=r.box[1], width=r.box[2], height=r.box[3]),
                    pixels=r.pixels,
                    method=r.method,
                )
                for r in regions
            ],
        )

    async def _fill(
        self, rgb: np.ndarray, marked: np.ndarray, method: int
    ) -> tuple[np.ndarray, list[inpainting.Region]]:
        """The learned model when there is one and AUTO or MODEL asks, else the classical fills."""
        if method == erase_pb2.ERASE_METHOD_MODEL or (method == erase_pb2.ERASE_METHOD_AUTO and self.inpainter):
            if self.inpainter is None:
                raise ServiceError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "this server has no inpainting model; use method AUTO, TELEA, NAVIER_STOKES or PATCH",
                    reason="NO_INPAINTING_MODEL",
                )
            filled = await self.inpainter.fill(rgb, marked)
            return await self._cpu(inpainting.model_fill, rgb, marked, filled)
        return await self._cpu(inpainting.erase, rgb, marked, method)

    async def ready(self) -> bool:
        """SERVING while the segmentation models, and the inpainting model if one is set, are ready."""
        if not await self.catalog.ready():
            return False
        return self.inpainter is None or await self.inpainter.ready()

    async def close(self) -> None:
        await self.catalog.close()
        if self.inpainter is not None:
            await self.inpainter.close()
        self.pool.shutdown(wait=False, cancel_futures=True)


def _record(
    stages: imaging.Stages, timings: options_pb2.StageTimings, attributes: dict[str, str] | None = None
) -> None:
    """Stages timed on a worker thread, as child spans of this request's span and in `timings`."""
    for name, start, end in stages.marks:
        span = tracer.start_span(name, start_time=start, attributes=attributes)
        span.end(end_time=end)
        setattr(timings, f"{name}_ms", getattr(timings, f"{name}_ms") + (end - start) / 1e6)


def _rect(box: tuple[int, int, int, int] | None) -> options_pb2.Rect | None:
    if box is None:
        return None
    left, top, right, bottom = box
    return options_pb2.Rect(left=left, top=top, width=right - left, height=bottom - top)


def _ms_since(mark: float) -> float:
    return (time.perf_counter() - mark) * 1000


@contextlib.contextmanager
def _stage(timings: options_pb2.StageTimings, name: str) -> Iterator[trace.Span]:
    """One stage of the work: a child span, and its time in `timings.<name>_ms`."""
    mark = time.perf_counter()
    with stage(name) as span:
        yield span
    setattr(timings, f"{name}_ms", getattr(timings, f"{name}_ms") + _ms_since(mark))  # AUTO may run a stage twice


def build(settings: InferenceSettings) -> ServiceSpec:
    tls = None
    if settings.mesh_ca_file and settings.mesh_cert_file and settings.mesh_key_file:
        tls = Identity("inference", settings.mesh_cert_file, settings.mesh_key_file, settings.mesh_ca_file)
    catalog = ModelCatalog(settings, tls)
    inpainter = None
    if settings.erase_model_name:  # served by the first Triton of TRITON_URL
        inpainter = TritonInpainter(
            settings.triton_urls[0], settings.erase_model_name, settings.triton_timeout_s, tls=tls
        )
    servicer = InferenceServicer(settings, catalog, inpainter)
    return ServiceSpec(
        service_names=[inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name],
        register=lambda server: inference_pb2_grpc.add_InferenceServicer_to_server(servicer, server),
        ready=servicer.ready,
        close=servicer.close,
    )
