"""The floor: the same work as the mesh on the shortest possible path.

No gRPC, no Triton, no batcher: decode, resize, the model with ai-edge-litert
in-process, mask refinement, compositing and encoding with the very functions and
encoder settings the inference service uses. One worker process per core.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from dataclasses import dataclass

import numpy as np
from ai_edge_litert.interpreter import Interpreter
from PIL import Image

from cutout.v1 import options_pb2
from services.inference import imaging
from services.inference.model import MODEL_REPOSITORY, PERSON_MODEL, SELFIE_SEGMENTATION
from services.inference.profiles import ModelProfile, load_config
from services.inference.settings import InferenceSettings

_worker: _FloorWorker | None = None


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
        self.encoders = imaging.EncoderDefaults(
            compression_effort=settings.compression_effort,
            jpeg_quality=settings.jpeg_quality,
            webp_quality=settings.webp_quality,
        )
        self.model = PersonModel()

    def cut_out(self, photo: bytes, output_format: int) -> bytes:
        spec = imaging.OutputSpec.from_proto(options_pb2.RemoveBackgroundOptions(format=output_format), self.encoders)
        image = imaging.decode(photo, self.limits)
        alpha = imaging.refine_mask(image, self.model.probability(image))
        imaging.foreground_fraction(alpha)
        return imaging.render(image, alpha, spec).data


def _init() -> None:
    global _worker
    _worker = _FloorWorker()


def _timed(args: tuple[bytes, int]) -> float:
    assert _worker is not None
    started = time.perf_counter()
    _worker.cut_out(*args)
    return time.perf_counter() - started


@dataclass(frozen=True)
class FloorResult:
    images_per_s: float  # all workers
    latencies_ms: list[float]  # one worker alone

    def merged(self, other: FloorResult) -> FloorResult:
        """Two measurements as one: the mean throughput, all the latencies."""
        return FloorResult((self.images_per_s + other.images_per_s) / 2, self.latencies_ms + other.latencies_ms)


def measure_floor(photo: bytes, output_format: int, throughput_items: int, latency_items: int) -> FloorResult:
    workers = os.cpu_count() or 1
    context = multiprocessing.get_context("spawn")
    with context.Pool(1, initializer=_init) as alone:
        alone.map(_timed, [(photo, output_format)] * 2)  # warm-up
        latencies = [alone.apply(_timed, ((photo, output_format),)) * 1000 for _ in range(latency_items)]
    with context.Pool(workers, initializer=_init) as pool:
        pool.map(_timed, [(photo, output_format)] * workers * 2, chunksize=1)  # warm-up
        started = time.perf_counter()
        pool.map(_timed, [(photo, output_format)] * throughput_items, chunksize=1)
        elapsed = time.perf_counter() - started
    return FloorResult(throughput_items / elapsed, latencies)
