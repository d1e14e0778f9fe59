from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import MIB, ServiceSettings

DATA = Path(__file__).resolve().parent.parent.parent / ".data" / "retention"


class RetentionSettings(ServiceSettings):
    """Environment variables CUTOUT_RETENTION_*."""

    model_config = SettingsConfigDict(env_prefix="CUTOUT_RETENTION_", extra="ignore")

    port: int = 50054
    # SQLite file by default; "postgresql+psycopg://user@host/db" for PostgreSQL.
    database_url: str = f"sqlite:///{DATA / 'retention.db'}"
    # Apply pending migrations at start-up (the embedded default). Kubernetes runs them as a
    # step of their own (`python -m services.<name> migrate`, a Job) and sets this false:
    # the service then stays NOT_SERVING until the schema is current.
    migrate_on_start: bool = True
    # "local": a folder; "s3": a bucket of any S3-compatible store (credentials from
    # the standard AWS_* variables or the pod's identity).
    blob_store: str = "local"
    blob_dir: Path = DATA / "blobs"
    s3_bucket: str = ""
    s3_prefix: str = ""
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    # Master keys "id:base64,id:base64" (the first wraps new account keys), given
    # directly or as a file (a mounted secret). Required: no key, no service.
    master_keys: str = ""
    master_keys_file: Path | None = None
    default_ttl_days: float = 30
    # The longest a plan may keep a result; plans not listed get the default.
    plan_max_ttl_days: dict[str, float] = Field(default_factory=lambda: {"free": 30, "pro": 30})
    max_result_bytes: int = 256 * MIB
    chunk_bytes: int = 1 * MIB
    sweep_interval_s: float = 60.0
    # A store that has not finished after this long was interrupted; the sweep removes it.
    pending_timeout_s: float = 600.0
    # Access-log lines (who read, deleted, expired whose result) are deleted after this.
    access_log_days: float = 180.0

    def master_key_spec(self) -> str:
        if self.master_keys_file:
            return self.master_keys_file.read_text().strip()
        return self.master_keys
