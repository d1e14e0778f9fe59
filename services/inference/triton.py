"""The segmentation model as Triton serves it, reached with tritonclient over gRPC."""

from __future__ import annotations

import grpc
import numpy as np
import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc import InferenceServerException, InferInput, InferRequestedOutput

from services.common.channels import channel_options
from services.common.errors import ServiceError
from services.common.tls import Identity

# Triton's own limit; masks and batches stay far below it.
_TRITON_MESSAGE_BYTES = 2**31 - 1


class TritonModel:
    """One model on one Triton server: readiness and batched inference."""

    def __init__(
        self,
        url: str,
        model_name: str,
        timeout_s: float,
        input_name: str = "IMAGE",
        output_name: str = "MASK",
        tls: Identity | None = None,
    ) -> None:
        self.url = url
        self.model_name = model_name
        self.timeout_s = timeout_s
        self.input_name = input_name
        self.output_name = output_name
        # Mutual TLS with the cell's certificate when the inference service has one.
        self._client = triton_aio.InferenceServerClient(
            url,
            ssl=tls is not None,
            root_certificates=str(tls.ca_file) if tls else None,
            private_key=str(tls.key_file) if tls else None,
            certificate_chain=str(tls.cert_file) if tls else None,
            channel_args=channel_options(_TRITON_MESSAGE_BYTES),
        )

    async def ready(self) -> bool:
        try:
            return bool(await self._client.is_model_ready(self.model_name, client_timeout=self.timeout_s))
        except InferenceServerException:
            return False

    async def infer(self, batch: np.ndarray) -> np.ndarray:
        """uint8 [N, H, W, 3] images to float32 [N, H, W] person probabilities."""
        tensor = InferInput(self.input_name, list(batch.shape), "UINT8")
        tensor.set_data_from_numpy(batch)
        try:
            result = await self._client.infer(
                self.model_name,
                [tensor],
                outputs=[InferRequestedOutput(self.output_name)],
                client_timeout=self.timeout_s,
            )
        except InferenceServerException as exc:
            raise _service_error(exc, self.timeout_s) from None
        masks = result.as_numpy(self.output_name)
        return masks.reshape(masks.shape[:3])

    async def close(self) -> None:
        await self._client.close()


def _service_error(exc: InferenceServerException, timeout_s: float) -> ServiceError:
    status = str(exc.status() or "")
    message = str(exc.message() or "")
    if "queue" in message.lower():
        return ServiceError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "the model server's queue is full; retry with backoff",
            reason="MODEL_OVERLOADED",
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
