from __future__ import annotations

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class GatewaySettings(ServiceSettings):
    """Environment variables CUTOUT_GATEWAY_*."""

    model_config = SettingsConfigDict(env_prefix="CUTOUT_GATEWAY_", extra="ignore")

    port: int = 50051
    inference_target: str = "127.0.0.1:50052"
    accounts_target: str = "127.0.0.1:50053"
    retention_target: str = "127.0.0.1:50054"
    # Upper bound for one inference call; a caller's shorter deadline wins.
    inference_timeout_s: float = 120.0
    # Upper bound for one call to accounts (authenticate, reserve, commit, ...).
    accounts_timeout_s: float = 10.0
    # Upper bound for storing or fetching one kept result.
    retention_timeout_s: float = 60.0
    retention_chunk_bytes: int = 1024 * 1024
    health_check_timeout_s: float = 2.0
    # Credits one RemoveBackground (or one stream item) costs, by options.size:
    # FULL (and unspecified) and PREVIEW (at most 0.25 MP). Whole credits: with the
    # ledger's unit, a preview can only be cheaper than a full result when the full
    # price is at least 2 (remove.bg's ratio is price_full 4, price_preview 1).
    price_full: int = Field(default=1, ge=1)
    price_preview: int = Field(default=1, ge=1)
    # Credits one EraseRegions (or one stream item carrying regions) costs.
    price_per_erase: int = Field(default=1, ge=1)
    # Flow control of RemoveBackgroundStream: items read and not yet answered, per
    # stream and over all streams of this process. Beyond them the gateway stops
    # reading, so a fast sender waits instead of filling memory. Per stream, enough
    # to fill a Triton batch (inference's max_batch_size).
    stream_items_in_flight: int = 16
    process_stream_items_in_flight: int = 64
    # A long stream re-checks its API key this often, so a revoked key stops it.
    stream_reauthenticate_s: float = 30.0

    @model_validator(mode="after")
    def _preview_not_dearer(self) -> GatewaySettings:
        if self.price_preview > self.price_full:
            raise ValueError(f"price_preview ({self.price_preview}) is more than price_full ({self.price_full})")
        return self
