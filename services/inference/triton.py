"""Triton servers as the inference service sees them, reached with tritonclient over gRPC."""

from __future__ import annotations

import grpc
import numpy as np
import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc import InferenceServerException, InferInput, InferRequestedOutput, model_config_pb2

from services.common.channels import channel_options
from services.common.errors import ServiceError
from services.common.tls import Identity
from services.inference.profiles import ModelProfile

# Triton's own limit; masks and batches stay far below it.
_TRITON_MESSAGE_BYTES = 2**31 - 1


class TritonServer:
    """One Triton server: its ready models, their configs, and batched inference."""

    def __init__(self, url: str, timeout_s: float, tls: Identity | None = None) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._client = _client(url, tls)

    async def ready_models(self) -> list[str]:
        """Names of the models this server has loaded and can run now; [] if it does not answer."""
        try:
            index = await self._client.get_model_repository_index(client_timeout=self.timeout_s)
        except InferenceServerException:
            return []
        return [model.name for model in index.models if model.state == "READY"]

    async def config(self, model_name: str) -> model_config_pb2.ModelConfig:
        response = await self._client.get_model_config(model_name, client_timeout=self.timeout_s)
        return response.config

    async def is_ready(self, model_name: str, timeout_s: float | None = None) -> bool:
        try:
            return bool(await self._client.is_model_ready(model_name, client_timeout=timeout_s or self.timeout_s))
        except InferenceServerException:
            return False

    async def infer(self, profile: ModelProfile, batch: np.ndarray, timeout_s: float | None = None) -> np.ndarray:
        """A batch of inputs shaped by `profile` to the model's first output, one entry per input."""
        tensor = InferInput(profile.input_name, list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch)
        try:
            result = await self._client.infer(
                profile.name,
                [tensor],
                outputs=[InferRequestedOutput(profile.output_name)],
                client_timeout=timeout_s or self.timeout_s,
            )
        except InferenceServerException as exc:
            raise _service_error(exc, timeout_s or self.timeout_s) from None
        return result.as_numpy(profile.output_name)

    async def close(self) -> None:
        await self._client.close()


def _client(url: str, tls: Identity | None) -> triton_aio.InferenceServerClient:
    """To Triton, over mutual TLS with the cell's certificate when the inference service has one."""
    return triton_aio.InferenceServerClient(
        url,
        ssl=tls is not None,
        root_certificates=str(tls.ca_file) if tls else None,
        private_key=str(tls.key_file) if tls else None,
        certificate_chain=str(tls.cert_file) if tls else None,
        channel_args=channel_options(_TRITON_MESSAGE_BYTES, ours=False),
    )


def _service_error(exc: InferenceServerException, timeout_s: float) -> ServiceError:
    status = str(exc.status() or "")
    message = str(exc.message() or "")
    if "queue" in message.lower():
        return ServiceError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "the model server's queue is full; retry with backoff",
            reason="MODEL_OVERLOADED",
            retry_after_s=1.0,
        )
    if "DEADLINE_EXCEEDED" in status:
        return ServiceError(
            grpc.StatusCode.UNAVAILABLE,
            f"the model server did not answer within {timeout_s:.0f}s; retry shortly",
            reason="MODEL_UNAVAILABLE",
        )
    if "UNAVAILABLE" in status or "not ready" in message.lower() or "unavailable" in message.lower():
        return ServiceError(
            grpc.StatusCode.UNAVAILABLE,
            "the model server (Triton) is unavailable; retry shortly",
            reason="MODEL_UNAVAILABLE",
        )
    return ServiceError(grpc.StatusCode.INTERNAL, f"the model server failed: {message}", reason="MODEL_FAILED")


class TritonInpainter:
    """A learned inpainting model on Triton (the erase slot): picture + mask in, picture out.

    Its contract is services/inference/model_slots/inpainting/config.pbtxt: IMAGE uint8
    [H, W, 3], MASK uint8 [H, W, 1] (255 where to fill), IMAGE_OUT uint8 [H, W, 3].
    """

    def __init__(self, url: str, model_name: str, timeout_s: float, tls: Identity | None = None) -> None:
        self.model_name = model_name
        self.timeout_s = timeout_s
        self._client = _client(url, tls)

    async def ready(self) -> bool:
        try:
            return bool(await self._client.is_model_ready(self.model_name, client_timeout=self.timeout_s))
        except InferenceServerException:
            return False

    async def fill(self, rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
        image = InferInput("IMAGE", list(rgb.shape), "UINT8")
        image.set_data_from_numpy(np.ascontiguousarray(rgb))
        marks = InferInput("MASK", [*mask.shape, 1], "UINT8")
        marks.set_data_from_numpy((mask.astype(np.uint8) * 255)[..., None])
        try:
            result = await self._client.infer(
                self.model_name,
                [image, marks],
                outputs=[InferRequestedOutput("IMAGE_OUT")],
                client_timeout=self.timeout_s,
            )
        except InferenceServerException as exc:
            raise _service_error(exc, self.timeout_s) from None
        return result.as_numpy("IMAGE_OUT")

    async def close(self) -> None:
        await self._client.close()
