from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from services.common.settings import MIB, ServiceSettings
from services.gateway.fetch import FetchRules


class GatewaySettings(ServiceSettings):
    """Environment variables CUTOUT_GATEWAY_*."""

    model_config = SettingsConfigDict(env_prefix="CUTOUT_GATEWAY_", extra="ignore")

    port: int = 50051
    # The public port accepts messages up to the input cap (inference's 50 MiB) plus room
    # for the options and framing; a larger one is refused from its length prefix, before
    # its bytes are buffered. Answers (up to max_message_bytes) may be larger.
    max_receive_message_bytes: int | None = 50 * MIB + 64 * 1024
    # The input cap (inference's MAX_IMAGE_BYTES): checked here too, before any credit is reserved.
    max_image_bytes: int = 50 * MIB
    # The public port serves TLS (tls_cert_file, tls_key_file) without client certificates.
    inference_target: str = "127.0.0.1:50052"
    accounts_target: str = "127.0.0.1:50053"
    retention_target: str = "127.0.0.1:50054"
    # URL fetch (image_url, background_image_url; services/gateway/fetch.py). Host names,
    # comma-separated, that may resolve to internal addresses (loopback, private, ...): every
    # other host resolving to one is refused. Empty: none (the default, and the safe choice).
    fetch_allowed_hosts: str = ""
    # The most bytes read from one URL (the input cap), the time for a whole fetch with its
    # redirects, and how many redirects are followed (each checked as a new URL).
    fetch_max_bytes: int = Field(default=50 * MIB, ge=1)
    fetch_timeout_s: float = Field(default=10.0, gt=0)
    fetch_max_redirects: int = Field(default=3, ge=0, le=10)
    # Extra CA trusted for https URLs besides the system's roots (tests; a private registry).
    fetch_ca_file: Path | None = None
    # Upper bound for one inference call; a caller's shorter deadline wins.
    inference_timeout_s: float = 120.0
    # Upper bound for one call to accounts (authenticate, reserve, commit, ...).
    accounts_timeout_s: float = 10.0
    # How long a finished result waits for its charge to be committed (retried while accounts
    # does not answer, within the call's deadline); past it the call fails UNAVAILABLE and
    # the result is not handed over.
    commit_retry_s: float = 10.0
    # How long a hold that was not handed over keeps being released (or refunded) while
    # accounts does not answer; past the hold timeout accounts releases it by itself.
    settle_retry_s: float = 300.0
    # Upper bound for storing or fetching one kept result.
    retention_timeout_s: float = 60.0
    retention_chunk_bytes: int = 1024 * 1024
    health_check_timeout_s: float = 2.0
    # Credits one RemoveBackground (or one stream item) costs, by options.size:
    # FULL (and unspecified) and PREVIEW (at most 0.25 MP), as remove.bg prices them
    # (a preview a quarter of a full result). Decimals to 0.001 credit, the ledger's unit.
    price_full: Decimal = Field(default=Decimal(1), ge=Decimal("0.001"), decimal_places=3)
    price_preview: Decimal = Field(default=Decimal("0.25"), ge=Decimal("0.001"), decimal_places=3)
    # A removal by a model named here (options.model) costs its price instead of
    # price_full, and a preview by it the same share of that as price_preview is of
    # price_full: JSON, e.g. {"isnet": 3} for the opt-in quality tier.
    price_per_model: dict[str, Decimal] = Field(default_factory=dict)
    # Credits one EraseRegions (or one stream item carrying regions) costs.
    price_per_erase: Decimal = Field(default=Decimal(1), ge=Decimal("0.001"), decimal_places=3)
    # Flow control of RemoveBackgroundStream: items read and not yet answered, per
    # stream and over all streams of this process. Beyond them the gateway stops
    # reading, so a fast sender waits instead of filling memory. Per stream, enough
    # to fill a Triton batch (inference's max_batch_size).
    stream_items_in_flight: int = 16
    process_stream_items_in_flight: int = 64
    # ... and over all streams of one account, so that one account's streams cannot
    # hold every slot of the process while others wait.
    account_stream_items_in_flight: int = 32
    # Limits before work (services/gateway/admission.py). Calls without an API key in
    # flight at once (sign-up, password logins, fetches by token, administration):
    calls_without_key: int = 32
    # ... and per source address, a rate (so that sign-ups cannot be farmed, nor
    # passwords and admin tokens guessed quickly, from one address).
    source_rate_per_s: float = 0.5
    source_rate_burst: int = 10
    # ... and from one source address at once, so that one source (header-only calls that
    # never send their body, say) cannot hold every slot for calls without a key.
    calls_without_key_per_source: int = Field(default=8, ge=1)
    # Per API key: calls in flight at once, and calls per second (bursts up to the burst).
    calls_per_key: int = 64
    # Per account, over all its keys: its share of the calls gRPC lets in at once
    # (MAX_CONCURRENT_RPCS), so that one tenant's keys cannot fill gRPC's own limit, past
    # which every other tenant's call gets RESOURCE_EXHAUSTED from gRPC itself.
    calls_per_account: int = Field(default=64, ge=1)
    # Load shedding: removals and erasures (unary calls and open streams, all keys) in flight
    # on this gateway at once; beyond it calls are refused at once with OVERLOADED and a
    # RetryInfo of overload_retry_after_s instead of queueing. 32 is what keeps inference's
    # batcher full (max_batch_size 16 x 2 batches at once); at 4x capacity on 2 CPU cores it
    # kept the p99 of admitted 1 MP calls at 3 to 6 s, against 22 to 55 s unbounded
    # (docs/operations/faults.md#overload).
    work_in_flight: int = Field(default=32, ge=1)
    # ... and at most this many of them for one account, so that one tenant's flood leaves
    # slots to the others (8 of the default 32); a lone tenant still keeps the batcher full.
    work_per_account: int = Field(default=24, ge=1)
    overload_retry_after_s: float = Field(default=1.0, gt=0)
    key_rate_per_s: float = 50.0
    key_rate_burst: int = 100
    # Rates are counted in Redis when set ("redis://host:6379/0"), shared by every
    # gateway replica of the cell; else in this process.
    redis_url: str = ""
    # A unary call's request must have arrived this long after the call started.
    request_arrival_s: float = 30.0
    # An open stream re-checks its API key this often, so a revoked key ends it (and
    # stops its items) within about this time.
    stream_reauthenticate_s: float = 0.5
    # Admission lets RemoveBackground, EraseRegions and RemoveBackgroundStream in on an
    # answer about the same API key this recent, without asking accounts again: their
    # reservation (AuthorizeAndReserve) looks the key up anyway, so a key revoked since
    # is still refused before anything is done for it that counts. 0 asks every time.
    admitted_key_ttl_s: float = Field(default=5.0, ge=0)
    admitted_keys: int = Field(default=10_000, ge=1)  # keys remembered at most, least recent forgotten

    @property
    def fetch_rules(self) -> FetchRules:
        hosts = frozenset(
            name.strip().lower().rstrip(".") for name in self.fetch_allowed_hosts.split(",") if name.strip()
        )
        return FetchRules(
            hosts, self.fetch_max_bytes, self.fetch_timeout_s, self.fetch_max_redirects, self.fetch_ca_file
        )

    @model_validator(mode="after")
    def _shares_below_grpcs_limit(self) -> GatewaySettings:
        # Each share leaves room under gRPC's own limit for everyone else.
        for name in ("calls_per_account", "calls_without_key"):
            if getattr(self, name) * 2 > self.max_concurrent_rpcs:
                raise ValueError(
                    f"{name} ({getattr(self, name)}) is more than half of max_concurrent_rpcs "
                    f"({self.max_concurrent_rpcs})"
                )
        return self

    @model_validator(mode="after")
    def _preview_not_dearer(self) -> GatewaySettings:
        if self.price_preview > self.price_full:
            raise ValueError(f"price_preview ({self.price_preview}) is more than price_full ({self.price_full})")
        for model, amount in self.price_per_model.items():
            if amount < Decimal("0.001") or amount != amount.quantize(Decimal("0.001")):
                raise ValueError(f"price_per_model[{model!r}] ({amount}) must be at least 0.001, to 0.001")
        return self
