"""The floor, and two pipelines a user could write in-process instead of calling the mesh.

- "floor": the same work as the mesh on the shortest possible path. No gRPC, no Triton,
  no batcher: decode, resize, the model with ai-edge-litert in-process, the mask to alpha
  as the fast detail level does it, compositing and encoding with the very functions and
  encoder settings the inference service uses (so it moves with them).
- "pillow": Pillow's defaults, as a first attempt looks: decode, `resize` to the model's
  input, the model, the mask resized back, `putalpha`, `save("PNG")`.
- "lean": what a user who cared about speed would write without refinement: a draft
  (DCT-scaled) decode for the model input, the mask resized back bilinearly, zlib level 1.

All three run the same model with LiteRT on one thread; one worker process per core.
The two references make PNG cut-outs only.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from ai_edge_litert.interpreter import Interpreter
from PIL import Image

from cutout.v1 import options_pb2
from services.common import output_spec
from services.inference import imaging
from services.inference.model import MODEL_REPOSITORY, PERSON_MODEL, SELFIE_SEGMENTATION
from services.inference.profiles import ModelProfile, load_config
from services.inference.settings import InferenceSettings

PIPELINES = ("floor", "pillow", "lean")
_worker: _FloorWorker | None = None
_pipeline: Callable[[bytes, int], bytes] | None = None


class PersonModel:
    """The person model in this process with LiteRT, fed and read as its profile says."""

    def __init__(self, threads: int = 1) -> None:
        self.profile = ModelProfile.from_config(load_config(MODEL_REPOSITORY / PERSON_MODEL / "config.pbtxt"))
        self.interpreter = Interpreter(model_path=str(SELFIE_SEGMENTATION.path()), num_threads=threads)
        self.interpreter.allocate_tensors()
        self.input_index = self.interpreter.get_input_details()[0]["index"]
        self.output_index = self.interpreter.get_output_details()[0]["index"]

    def probability(self, image: Image.Image) -> np.ndarray:
        self.interpreter.set_tensor(self.input_index, self.profile.tensor(image)[None])
        self.interpreter.invoke()
        return self.profile.probability(self.interpreter.get_tensor(self.output_index)[0])


class _FloorWorker:
    def __init__(self) -> None:
        settings = InferenceSettings()
        self.limits = imaging.DecodeLimits(settings.max_image_bytes, settings.max_pixels)
        self.encoders = output_spec.EncoderDefaults(
            compression_effort=settings.compression_effort,
            jpeg_quality=settings.jpeg_quality,
            webp_quality=settings.webp_quality,
        )
        self.model = PersonModel()

    def cut_out(self, photo: bytes, output_format: int) -> bytes:
        spec = output_spec.OutputSpec.from_proto(
            options_pb2.RemoveBackgroundOptions(format=output_format), self.encoders
        )
        prepared = imaging.prepare(imaging.open_image(photo, self.limits), spec, self.model.profile)
        self.model.interpreter.set_tensor(self.model.input_index, prepared.tensor[None])
        self.model.interpreter.invoke()
        output = self.model.interpreter.get_tensor(self.model.output_index)[0]
        rendered, _ = imaging.finish(prepared, self.model.profile.probability(output), spec)
        return rendered.data

    def pillow(self, photo: bytes, output_format: int) -> bytes:
        """Pillow's defaults throughout (resize: bicubic; save: zlib level 6, adaptive filters)."""
        image = Image.open(io.BytesIO(photo)).convert("RGB")
        probability = self.model.probability(image.resize((self.model.profile.width, self.model.profile.height)))
        mask = Image.fromarray(np.uint8(np.clip(probability * 255 + 0.5, 0, 255)), "L").resize(image.size)
        image.putalpha(mask)
        out = io.BytesIO()
        image.save(out, "PNG")
        return out.getvalue()

    def lean(self, photo: bytes, output_format: int) -> bytes:
        """The fastest a careful user gets without refinement: draft decode for the model, zlib level 1."""
        size = (self.model.profile.width, self.model.profile.height)
        small = Image.open(io.BytesIO(photo))
        small.draft("RGB", size)  # JPEG: decoded at 1/2, 1/4 or 1/8 scale, at least `size`
        probability = self.model.probability(small.convert("RGB").resize(size, Image.Resampling.BILINEAR))
        image = Image.open(io.BytesIO(photo)).convert("RGB")
        mask = Image.fromarray(np.uint8(np.clip(probability * 255 + 0.5, 0, 255)), "L")
        image.putalpha(mask.resize(image.size, Image.Resampling.BILINEAR))
        out = io.BytesIO()
        image.save(out, "PNG", compress_level=1)
        return out.getvalue()


def _init(pipeline: str) -> None:
    global _worker, _pipeline
    _worker = _FloorWorker()
    _pipeline = {"floor": _worker.cut_out, "pillow": _worker.pillow, "lean": _worker.lean}[pipeline]


def _timed(args: tuple[bytes, int]) -> float:
    assert _pipeline is not None
    started = time.perf_counter()
    _pipeline(*args)
    return time.perf_counter() - started


@dataclass(frozen=True)
class FloorResult:
    images_per_s: float  # all workers
    latencies_ms: list[float]  # one worker alone

    def merged(self, other: FloorResult) -> FloorResult:
        """Two measurements as one: the mean throughput, all the latencies."""
        return FloorResult((self.images_per_s + other.images_per_s) / 2, self.latencies_ms + other.latencies_ms)


def measure_floor(
    photo: bytes, output_format: int, throughput_items: int, latency_items: int, pipeline: str = "floor"
) -> FloorResult:
    workers = os.cpu_count() or 1
    context = multiprocessing.get_context("spawn")
    with context.Pool(1, initializer=_init, initargs=(pipeline,)) as alone:
        alone.map(_timed, [(photo, output_format)] * 2)  # warm-up
        latencies = [alone.apply(_timed, ((photo, output_format),)) * 1000 for _ in range(latency_items)]
    with context.Pool(workers, initializer=_init, initargs=(pipeline,)) as pool:
        pool.map(_timed, [(photo, output_format)] * workers * 2, chunksize=1)  # warm-up
        started = time.perf_counter()
        pool.map(_timed, [(photo, output_format)] * throughput_items, chunksize=1)
        elapsed = time.perf_counter() - started
    return FloorResult(throughput_items / elapsed, latencies)
