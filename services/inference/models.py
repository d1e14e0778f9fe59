"""Which segmentation models exist, and which one a request uses.

The catalog asks every configured Triton server for its ready models and their
configs; each model whose config declares a profile (`profiles.py`) gets its own
batcher, so requests are batched per model and a slow model's queue never holds up
a fast one's. A request names a model, or a subject: PERSON and ANY map to the
models the settings name; at DETAIL_FAST, AUTO tries the person model first and keeps its
mask only when it looks like a person (see `looks_like_person`), else runs the general
model (the levels: `detail.py`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import grpc
import numpy as np
from tritonclient.grpc import InferenceServerException

from cutout.v1 import options_pb2
from services.common.errors import ServiceError, invalid_argument
from services.common.tls import Identity
from services.inference.batcher import Batcher
from services.inference.profiles import ModelProfile, ProfileError, is_segmentation
from services.inference.settings import InferenceSettings
from services.inference.triton import TritonServer

log = logging.getLogger(__name__)
Subject = options_pb2.Subject

# How often a request for a model the catalog does not know may trigger a new look
# at the Triton servers' repositories (a model loaded since start-up).
_REFRESH_INTERVAL_S = 5.0
# A model spends at most this share of its time on canaries (see _canaries_answer).
CANARY_TIME_SHARE = 0.01


@dataclass
class ServedModel:
    profile: ModelProfile
    server: TritonServer
    batcher: Batcher


@dataclass(frozen=True)
class PersonRule:
    """When AUTO keeps the person model's mask: measured on labelled photos (docs/decisions/auto-rule.md)."""

    min_area: float  # fraction of the picture the person covers (p > 0.5)
    max_area: float
    min_confidence: float  # mean probability inside the person
    max_edge_ratio: float  # uncertain pixels (0.2 < p < 0.8) per person pixel
    min_bottom_contact: float  # fraction of the bottom edge (its last 1/32) the person covers


def looks_like_person(probability: np.ndarray, rule: PersonRule) -> bool:
    """Whether a person model's mask shows a portrait rather than a guess.

    On objects and animals the person model either finds nothing, covers nearly the
    whole frame (a cat's face, coins), leaves a wide band of uncertain pixels around
    what it found (a cup), or finds a confident shape floating in the frame (a logo, a
    horse); in a portrait its mask is confident, has a thin uncertain edge and reaches
    the bottom of the frame (shoulders, a body cut by the frame) as in the selfie and
    upper-body photos the model was made for. Anything else goes to the general model,
    which cuts people out too, only slower.
    """
    inside = probability > 0.5
    area = float(inside.mean())
    if not rule.min_area <= area <= rule.max_area:
        return False
    confidence = mask_confidence(probability)
    uncertain = float(((probability > 0.2) & (probability < 0.8)).mean())
    bottom = float(inside[-max(1, len(inside) // 32) :].mean())
    return (
        confidence >= rule.min_confidence
        and uncertain / area <= rule.max_edge_ratio
        and bottom >= rule.min_bottom_contact
    )


def mask_confidence(probability: np.ndarray) -> float:
    """How sure a mask is, 0 to 1: the mean probability of its pixels above 0.5 (0 if none is),
    the measure AUTO's person rule reads (CutoutImage.confidence)."""
    inside = probability > 0.5
    return float(probability[inside].mean()) if inside.any() else 0.0


class ModelCatalog:
    def __init__(self, settings: InferenceSettings, tls: Identity | None = None) -> None:
        self.settings = settings
        self.servers = [TritonServer(url, settings.triton_timeout_s, tls) for url in settings.triton_urls]
        self.models: dict[str, ServedModel] = {}
        self.person_rule = PersonRule(
            settings.auto_person_min_area,
            settings.auto_person_max_area,
            settings.auto_person_min_confidence,
            settings.auto_person_max_edge_ratio,
            settings.auto_person_min_bottom_contact,
        )
        self._refreshed_at = -_REFRESH_INTERVAL_S
        self._refresh_lock = asyncio.Lock()
        # Per model: when its next canary is due, and whether its last one failed.
        self._canary_due: dict[str, float] = {}
        self._canary_failed: set[str] = set()
        # When each model last answered real traffic: under load that stands for the canary,
        # which would queue behind the traffic and time out (readiness flapping under load).
        self._answered_at: dict[str, float] = {}

    async def refresh(self) -> None:
        """Takes in the segmentation models the servers have ready now (first server wins a name)."""
        async with self._refresh_lock:
            self._refreshed_at = time.monotonic()
            for server in self.servers:
                for name in await server.ready_models():
                    if name in self.models:
                        continue
                    try:
                        config = await server.config(name)
                    except InferenceServerException:  # unloaded or gone since the index: next time
                        continue
                    if not is_segmentation(config):
                        continue
                    try:
                        profile = ModelProfile.from_config(config)
                    except ProfileError as error:
                        log.error("model %s is not served: %s", name, error)
                        continue
                    self.models[name] = ServedModel(profile, server, self._batcher(profile, server))
                    log.info("serving model %s from %s", name, server.url)

    def _batcher(self, profile: ModelProfile, server: TritonServer) -> Batcher:
        max_batch = min(self.settings.max_batch_size, profile.max_batch_size or 1)
        max_queue = max(max_batch, profile.max_queue or self.settings.max_queue)

        async def run(batch: np.ndarray) -> np.ndarray:
            if not profile.max_batch_size:  # the model takes one image at a time
                output = await server.infer(profile, batch[0])
            else:
                output = await server.infer(profile, batch)
            self._answered_at[profile.name] = time.monotonic()  # as good as a canary
            return output

        return Batcher(
            run,
            max_batch_size=max_batch,
            max_wait_s=self.settings.max_batch_wait_ms / 1000,
            max_queue=max_queue,
            span_attributes={"cutout.model": profile.name},
        )

    async def ready(self) -> bool:
        """Ready when the person and general models (both levels') are served and their servers say they are ready."""
        required = self.settings.configured_models
        if any(name not in self.models for name in required):
            await self.refresh()
        if any(name not in self.models for name in required):
            return False
        timeout = self.settings.readiness_timeout_s
        if not all([await self.models[name].server.is_ready(name, timeout) for name in required]):
            self._canary_due.clear()  # a Triton that comes back is canaried at once
            return False
        return await self._canaries_answer(required)

    async def _canaries_answer(self, names: tuple[str, ...]) -> bool:
        """One blank picture through each model, straight to Triton, when its canary is due
        (its last answer stands in between): True if no model's last canary failed.

        A canary is due canary_interval_s after the last one, or after the model last answered
        real traffic, but never sooner than CANARY_TIME_SHARE's inverse times the last canary's
        own duration: a heavy model (U²-Net-p, about 0.8 s of CPU a picture) would otherwise
        spend 7 % of a core on canaries, idle or busy with the other model."""
        interval = self.settings.canary_interval_s
        for name in names:
            now = time.monotonic()
            answered = now - self._answered_at.get(name, -float("inf")) < interval
            if answered:
                self._canary_failed.discard(name)
            if answered or now < self._canary_due.get(name, -float("inf")):
                continue
            profile, server = self.models[name].profile, self.models[name].server
            h, w = profile.height, profile.width
            picture = np.zeros((h, w, 3) if profile.layout == "NHWC" else (3, h, w), np.float32)
            try:
                await server.infer(
                    profile, picture[None] if profile.max_batch_size else picture, self.settings.canary_timeout_s
                )
            except ServiceError as error:
                log.warning("canary inference on %s failed: %s (%s)", name, error.code.name, error.reason or "")
                self._canary_failed.add(name)
                self._canary_due[name] = time.monotonic() + interval
                break  # one Triton timeout per probe at most
            done = time.monotonic()
            self._canary_failed.discard(name)
            self._canary_due[name] = done + max(interval, (done - now) / CANARY_TIME_SHARE)
        return not self._canary_failed

    async def get(self, name: str) -> ServedModel:
        if name not in self.models and time.monotonic() - self._refreshed_at >= _REFRESH_INTERVAL_S:
            await self.refresh()
        if name not in self.models:
            if name in self.settings.configured_models:
                raise unavailable_model(name)  # configured, so it is expected back
            served = ", ".join(sorted(self.models)) or "none right now"
            raise invalid_argument(f"unknown model {name!r}; this service runs: {served}", field="options.model")
        return self.models[name]

    async def listing(self) -> list[options_pb2.Model]:
        """Every model served (re-read from the servers at most every few seconds), and the
        configured person and general models even while they are not, as served=false."""
        if time.monotonic() - self._refreshed_at >= _REFRESH_INTERVAL_S:
            await self.refresh()
        defaults = {
            self.settings.person_model: Subject.SUBJECT_PERSON,
            self.settings.general_model: Subject.SUBJECT_ANY,
        }
        listed = []
        for name in sorted(set(self.models) | set(defaults)):
            served = self.models.get(name)
            model = options_pb2.Model(name=name, default_for=defaults.get(name, Subject.SUBJECT_UNSPECIFIED))
            if served is not None:
                profile = served.profile
                model.purpose, model.license = profile.purpose, profile.license
                model.input_width, model.input_height = profile.width, profile.height
                model.served = name not in self._canary_failed
            listed.append(model)
        return listed

    async def close(self) -> None:
        for model in self.models.values():
            await model.batcher.close()
        for server in self.servers:
            await server.close()


def unavailable_model(name: str) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.UNAVAILABLE, f"model {name} is not loaded right now; retry shortly", reason="MODEL_UNAVAILABLE"
    )
