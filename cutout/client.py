"""A small synchronous client for cutout.v1.Cutout (used by the command line)."""

from __future__ import annotations

import os

import grpc

from cutout.v1 import cutout_pb2, cutout_pb2_grpc, options_pb2
from services.common.channels import channel_options
from services.common.settings import API_KEY_METADATA

DEFAULT_GATEWAY = "127.0.0.1:50051"


class CutoutClient:
    def __init__(self, target: str | None = None, api_key: str | None = None) -> None:
        self.target = target or os.environ.get("CUTOUT_GATEWAY", DEFAULT_GATEWAY)
        self.api_key = api_key if api_key is not None else os.environ.get("CUTOUT_API_KEY", "")
        self._channel = grpc.insecure_channel(self.target, options=channel_options())
        self._stub = cutout_pb2_grpc.CutoutStub(self._channel)

    def remove_background(
        self,
        image: bytes,
        options: options_pb2.RemoveBackgroundOptions | None = None,
        *,
        idempotency_key: str = "",
        timeout_s: float = 120.0,
    ) -> cutout_pb2.RemoveBackgroundResponse:
        request = cutout_pb2.RemoveBackgroundRequest(image=image, options=options, idempotency_key=idempotency_key)
        return self._stub.RemoveBackground(request, timeout=timeout_s, metadata=self._metadata())

    def _metadata(self) -> list[tuple[str, str]]:
        return [(API_KEY_METADATA, self.api_key)] if self.api_key else []

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> CutoutClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
