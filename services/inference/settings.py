from __future__ import annotations

import os
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import MIB, ServiceSettings
from services.inference.model import FINE_MODEL, GENERAL_MODEL, PERSON_MODEL


class InferenceSettings(ServiceSettings):
    """Environment variables CUTOUT_INFERENCE_*."""

    model_config = SettingsConfigDict(env_prefix="CUTOUT_INFERENCE_", extra="ignore")

    port: int = 50052
    # Triton's gRPC address: the embedded one on loopback, or servers elsewhere, comma
    # separated (say a CPU Triton for the person model and a GPU one for the general
    # model): every segmentation model they serve can be used (services/inference/models.py).
    triton_url: str = "127.0.0.1:8001"
    # The Triton model that EraseRegions uses (AUTO and MODEL), a deployer's learned
    # inpainting model in the slot of model_slots/inpainting/; empty: the classical fills only.
    erase_model_name: str = ""
    triton_timeout_s: float = 30.0
    # Readiness: each probe of Triton waits this long at most (a stopped Triton must turn
    # the service NOT_SERVING within seconds, not after triton_timeout_s) ...
    readiness_timeout_s: float = 2.0
    # ... and every canary_interval_s one canary inference per required model (a blank
    # picture, straight to Triton) must answer within canary_timeout_s: a Triton that
    # says its models are ready but cannot infer is not ready.
    canary_interval_s: float = 10.0
    canary_timeout_s: float = 10.0
    # The models behind `subject: PERSON` and `subject: ANY` (at DETAIL_FAST, AUTO tries the
    # first, then the second), and the general model of DETAIL_FINE (services/inference/detail.py).
    person_model: str = PERSON_MODEL
    general_model: str = GENERAL_MODEL
    fine_model: str = FINE_MODEL
    # The level a request that names none gets: fast, balanced or fine.
    default_detail: Literal["fast", "balanced", "fine"] = "fine"
    # Alpha matting (services/inference/matting.py) works on the picture scaled to at most
    # this many pixels on its long side, in a band this wide around the mask's outline, and
    # stops after this many solver iterations: its cost is bounded whatever the upload.
    matting_side: int = Field(default=640, ge=64, le=2048)
    matting_band_px: int = Field(default=3, ge=1, le=16)
    matting_max_iterations: int = Field(default=400, ge=10)
    # AUTO keeps the person model's mask when it covers this much of the picture ...
    auto_person_min_area: float = 0.02
    auto_person_max_area: float = 0.8
    # ... with this mean probability inside, at most this many uncertain pixels
    # (0.2 < p < 0.8) per person pixel, and covering at least this much of the frame's
    # bottom edge. Measured: docs/models/index.md#choosing-the-model.
    auto_person_min_confidence: float = 0.9
    auto_person_max_edge_ratio: float = 0.35
    auto_person_min_bottom_contact: float = 0.15
    # The batcher, one per model: images per Triton call, how long the first image waits for
    # company, and how many may wait in all before callers are turned away.
    max_batch_size: int = 16
    max_batch_wait_ms: float = 5.0
    max_queue: int = 128
    # Decode limits: 25 MP and 50 MiB are served; more is refused before decoding.
    max_image_bytes: int = 50 * MIB
    max_pixels: int = 25_000_000
    # Decoded pixels held at once by this process (each costs about 3 bytes while it
    # waits and up to ~25 bytes while refined and encoded); callers beyond it wait.
    max_pixels_in_flight: int = 50_000_000
    # Threads for decode, refinement and encoding (Pillow and numpy release the GIL).
    cpu_workers: int = os.cpu_count() or 2
    compression_effort: int = 1
    jpeg_quality: int = 90
    webp_quality: int = 90

    @property
    def configured_models(self) -> tuple[str, ...]:
        """The models the settings name (person, general, fine), each once: readiness waits for them."""
        return tuple(dict.fromkeys((self.person_model, self.general_model, self.fine_model)))

    @property
    def triton_urls(self) -> list[str]:
        return [url.strip() for url in self.triton_url.split(",") if url.strip()]
