from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings

DEFAULT_DATABASE = Path(__file__).resolve().parent.parent.parent / ".data" / "accounts" / "accounts.db"


class AccountsSettings(ServiceSettings):
    """Environment variables CUTOUT_ACCOUNTS_*."""

    model_config = SettingsConfigDict(env_prefix="CUTOUT_ACCOUNTS_", extra="ignore")

    port: int = 50053
    # SQLite file by default; "postgresql+psycopg://user@host/db" for PostgreSQL.
    database_url: str = f"sqlite:///{DEFAULT_DATABASE}"
    # SQLite: how long a writer waits for the lock before giving up.
    sqlite_busy_timeout_s: float = 30.0
    # Apply pending migrations at start-up (the embedded default). Kubernetes runs them as a
    # step of their own (`python -m services.<name> migrate`, a Job) and sets this false:
    # the service then stays NOT_SERVING until the schema is current.
    migrate_on_start: bool = True
    # Administration (cutout.v1.Admin) has a listener of its own, inside the cell only:
    # loopback by default (the pod's own address on Kubernetes, behind its NetworkPolicy).
    admin_host: str = "127.0.0.1"
    admin_port: int = 50055
    admin_port_file: Path | None = None  # the bound port is written here (port 0 picks one)
    # The named admins: one line per admin, `name sha256:<hex of sha256(token)>` (a mounted
    # secret; re-read when it changes). None or empty: administration is refused.
    admins_file: Path | None = None
    # Wrong admin tokens per source address before backoff (2 s, 4 s, ... up to the max),
    # and each admin's rate of calls.
    admin_failures_free: int = 3
    admin_backoff_max_s: float = 300.0
    admin_rate_per_s: float = 5.0
    admin_rate_burst: int = 20
    # The admin listener's fair shares (services/common/arrival.py): calls in flight from one
    # source address (of the 16 gRPC lets in), and how long a call's request may take to arrive.
    admin_calls_per_source: int = Field(default=4, ge=1, le=8)
    admin_request_arrival_s: float = Field(default=5.0, gt=0)
    # Retention, which an erasure crypto-shreds (accounts drives the erasure saga).
    retention_target: str = ""
    retention_timeout_s: float = 120.0
    # DeleteAccount waits this long for the erasure to finish; after that it answers
    # "pending" and the erasure finishes by itself.
    erasure_wait_s: float = 5.0
    # How often unfinished erasures (a service was down or crashed midway) are resumed.
    erasure_resume_interval_s: float = 30.0
    # Free credits at sign-up (a decimal, to 0.001), and how long credits last.
    signup_credits: Decimal = Field(default=Decimal(25), ge=0, decimal_places=3)
    signup_credit_days: int = 30
    grant_credit_days: int = 365
    # A reservation not committed within this time is released (the request died).
    hold_timeout_s: float = 300.0
    # Free replays of a served idempotency key (each makes the result again), then ALREADY_SERVED.
    replays_per_key: int = Field(default=3, ge=0, le=100)
    # How often the sweep releases lapsed holds and writes off expired grants.
    sweep_interval_s: float = 30.0
    # The cell's own region: it signs up only accounts of this region; a sign-up for
    # another region is refused with that region's endpoint from region_endpoints.
    region: str = "eu"
    region_endpoints: dict[str, str] = Field(
        default_factory=lambda: {"eu": "eu.api.cutout.example.com:443", "us": "us.api.cutout.example.com:443"}
    )
    default_plan: str = "free"
    # scrypt cost (N); the parameters are stored in each hash, so raising it later
    # keeps old passwords valid.
    scrypt_n: int = 2**14
    # Sign-ups, logins and password changes hash in threads of their own (never the
    # ledger's); beyond password_queue of them at once, more are refused (RetryInfo).
    password_workers: int = 2
    password_queue: int = 16
    # Wrong passwords in a row per account (and per e-mail) before logins back off: 2 s,
    # then 4, 8, ... up to login_backoff_max_s after each further failure.
    login_failures_free: int = 5
    login_backoff_max_s: float = 900.0
    # Lifetimes of what is not an image (docs/privacy/retention.md):
    # a settled reservation's idempotency key and request fingerprint (sha256 of the
    # image and options) are dropped this long after its last reserve (the amounts stay);
    idempotency_hours: float = 24.0
    # released (failed or lapsed) reservations are deleted after this many days;
    released_reservation_days: float = 7.0
    # revoked API keys are deleted this long after their revocation.
    revoked_key_days: float = 30.0
    # A sign-up waits this long for its e-mail code, then it (and its hashed password) is deleted.
    signup_code_hours: float = 24.0
    # Where the e-mails go (codes, notices): a folder, one .eml file per message, owner-only
    # (a mail relay or the developer picks them up); deleted after mail_outbox_hours.
    mail_outbox_dir: Path = DEFAULT_DATABASE.parent / "outbox"
    mail_outbox_hours: float = 24.0
    # Or, with smtp_host set, the region's mail relay: SMTP with STARTTLS (required), its
    # certificate checked against smtp_ca_file (else the system's roots); login if a user is set.
    smtp_host: str = ""
    smtp_port: int = 587
    smtp_ca_file: Path | None = None
    smtp_username: str = ""
    smtp_password_file: Path | None = None
    mail_from: str = "Cutout <no-reply@cutout.example.com>"
    # At most free_grants_per_source sign-ups with free credits per source address
    # (IPv6 by its /64) in free_grant_window_h; later ones get no free credits. 0: no cap.
    free_grants_per_source: int = 3
    free_grant_window_h: float = 24.0
