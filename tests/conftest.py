"""Session-wide real parts: the astronaut photo, one mesh (Triton + inference + accounts +
gateway) and a funded account whose API key the `gateway` stub sends on every call."""

from __future__ import annotations

import collections
import contextlib
import io
import os
import random
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from PIL import Image, ImageOps

from cutout.v1 import account_pb2, cutout_pb2_grpc
from services.accounts.credentials import canonical_email
from services.accounts.mail import latest_code
from services.common.assets import ASTRONAUT
from services.common.settings import API_KEY_METADATA
from services.inference.model import fetch_models
from services.launcher import ADMINS, ROOT, AdminEndpoint, Mesh, ServiceProcess, free_port, gateway_process

CACHE = ROOT / ".cache"
SIGNUP_CREDITS = 3


@pytest.fixture(scope="session")
def astronaut_png() -> bytes:
    return ASTRONAUT.fetch(CACHE / "samples" / "astronaut.png").read_bytes()


@pytest.fixture(scope="session")
def astronaut(astronaut_png: bytes) -> Image.Image:
    return Image.open(io.BytesIO(astronaut_png)).convert("RGB")


@pytest.fixture(scope="session")
def model_paths() -> list[Path]:
    return fetch_models()


# The suite makes hundreds of removals: its meshes cut out at the fast level unless a request
# asks for another (tens of ms each, not a second or two). tests/mesh/test_detail.py asks for
# each level by name and checks the service's own default.
FAST_LEVEL = {"CUTOUT_INFERENCE_DEFAULT_DETAIL": "fast"}


@pytest.fixture(scope="session")
def mesh(tmp_path_factory: pytest.TempPathFactory, model_paths: list[Path]) -> Iterator[Mesh]:
    # Few free credits at sign-up, so that tests can top accounts up to small exact balances.
    mesh = Mesh(
        data_dir=tmp_path_factory.mktemp("mesh"),
        env={
            "CUTOUT_ACCOUNTS_SIGNUP_CREDITS": str(SIGNUP_CREDITS),
            **FAST_LEVEL,
            # The suite signs up hundreds of accounts from one address; tests/mesh/test_abuse.py
            # checks the default per-source limits on gateways of their own.
            "CUTOUT_GATEWAY_SOURCE_RATE_PER_S": "1000",
            "CUTOUT_GATEWAY_SOURCE_RATE_BURST": "1000",
            # Load shedding (WORK_IN_FLIGHT, 32, and WORK_PER_ACCOUNT, 24): tests fire 50 removals
            # at once from one account to race the ledger; tests/mesh/test_faults.py checks the
            # shedding and the per-account share on gateways of their own.
            "CUTOUT_GATEWAY_WORK_IN_FLIGHT": "1000",
            "CUTOUT_GATEWAY_WORK_PER_ACCOUNT": "1000",
            # Likewise the admin listener's throttles (tests/mesh/test_rights.py checks the defaults).
            "CUTOUT_ACCOUNTS_ADMIN_RATE_PER_S": "1000",
            "CUTOUT_ACCOUNTS_ADMIN_RATE_BURST": "1000",
            "CUTOUT_ACCOUNTS_ADMIN_FAILURES_FREE": "1000",
            # ... and the cap on free grants per source (tests/mesh/test_signup.py checks it on
            # an accounts service of its own).
            "CUTOUT_ACCOUNTS_FREE_GRANTS_PER_SOURCE": "0",
            # URL fetch: the tests' picture server listens on loopback, allowed by the name
            # "localhost" only (tests/mesh/test_url_fetch.py: 127.0.0.1, "vm", ... stay refused).
            "CUTOUT_GATEWAY_FETCH_ALLOWED_HOSTS": "localhost",
        },
    )
    mesh.start()
    yield mesh
    statuses = mesh.stop()
    assert all(code == 0 for code in statuses.values()), statuses
    for service in mesh.services:
        assert "--- Logging error ---" not in service.log_path.read_text(), f"see {service.log_path}"


@dataclass(frozen=True)
class Customer:
    account_id: str
    email: str
    password: str
    api_key: str

    @property
    def metadata(self) -> list[tuple[str, str]]:
        return [(API_KEY_METADATA, self.api_key)]


_BASETEMP: list[Path] = []


@pytest.fixture(scope="session", autouse=True)
def _remember_basetemp(tmp_path_factory: pytest.TempPathFactory) -> None:
    _BASETEMP.append(tmp_path_factory.getbasetemp())


def sign_up_code(email: str, timeout_s: float = 10.0) -> str:
    """The code a cell of this session e-mailed to `email` (every mesh's outbox is under basetemp)."""
    deadline = time.monotonic() + timeout_s
    while True:
        for pattern in ("*/outbox", "*/*/outbox", "*/*/*/outbox"):
            for outbox in _BASETEMP[0].glob(pattern):
                code = latest_code(outbox, email)
                if code is not None:
                    return code
        if time.monotonic() > deadline:
            raise TimeoutError(f"no sign-up code for {email} in any outbox")
        time.sleep(0.05)


def sign_up(
    channel: grpc.Channel, email: str, password: str, region: str = "eu", **fields: object
) -> account_pb2.VerifySignUpResponse:
    """SignUp, then VerifySignUp with the code from the outbox: the account and its first key."""
    cutout = cutout_pb2_grpc.CutoutStub(channel)
    cutout.SignUp(
        account_pb2.SignUpRequest(email=email, password=password, region=region, age_confirmed=True, **fields),
        timeout=30,
    )
    code = sign_up_code(canonical_email(email))
    return cutout.VerifySignUp(account_pb2.VerifySignUpRequest(email=email, password=password, code=code), timeout=30)


def new_account(channel: grpc.Channel, admin: str | AdminEndpoint, credits: int | None = None) -> Customer:
    """Signs up a fresh account, tops its balance up to exactly `credits` if given, makes a key.

    `admin` is the admin endpoint of the accounts behind `channel`, or a running Mesh's admin
    token (administration is not on the gateway: see Mesh.admin)."""
    email, password = f"test-{secrets.token_hex(6)}@example.com", secrets.token_urlsafe(15)
    verified = sign_up(channel, email, password)
    account_id = verified.profile.account_id
    if credits is not None:
        assert credits >= verified.balance.available, "cannot grant a negative amount"
        if credits > verified.balance.available:
            endpoint = ADMINS[admin] if isinstance(admin, str) else admin
            with endpoint.channel() as admin_channel:
                cutout_pb2_grpc.AdminStub(admin_channel).GrantCredits(
                    account_pb2.GrantCreditsRequest(account_id=account_id, amount=credits - verified.balance.available),
                    metadata=endpoint.metadata,
                    timeout=30,
                )
    return Customer(account_id, email, password, verified.api_key)


@pytest.fixture(scope="session")
def raw_channel(mesh: Mesh) -> Iterator[grpc.Channel]:
    """To the gateway, with no credentials."""
    with mesh.gateway.channel() as channel:
        yield channel


@pytest.fixture(scope="session")
def funded_account(mesh: Mesh, raw_channel: grpc.Channel) -> Customer:
    """The account the image tests run under: more credits than the session can spend."""
    return new_account(raw_channel, mesh.admin_token, credits=1_000_000)


_Details = collections.namedtuple(
    "_Details", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
)


class _CallDetails(_Details, grpc.ClientCallDetails):
    pass


class WithApiKey(grpc.UnaryUnaryClientInterceptor):
    """Adds an API key to every call that does not carry one."""

    def __init__(self, api_key: str) -> None:
        self.api_key = api_key

    def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        metadata = list(details.metadata or [])
        if not any(key == API_KEY_METADATA for key, _ in metadata):
            metadata.append((API_KEY_METADATA, self.api_key))
        details = _CallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready, details.compression
        )
        return continuation(details, request)


@pytest.fixture(scope="session")
def gateway_channel(raw_channel: grpc.Channel, funded_account: Customer) -> grpc.Channel:
    """To the gateway, sending the funded account's key."""
    return grpc.intercept_channel(raw_channel, WithApiKey(funded_account.api_key))


@pytest.fixture(scope="session")
def gateway(gateway_channel: grpc.Channel) -> cutout_pb2_grpc.CutoutStub:
    return cutout_pb2_grpc.CutoutStub(gateway_channel)


@pytest.fixture(scope="session")
def admin_channel(mesh: Mesh) -> Iterator[grpc.Channel]:
    """To accounts' admin listener (inside the cell; never the gateway), with no credentials."""
    with mesh.admin.channel() as channel:
        yield channel


@pytest.fixture(scope="session")
def admin(admin_channel: grpc.Channel) -> cutout_pb2_grpc.AdminStub:
    return cutout_pb2_grpc.AdminStub(admin_channel)


@contextlib.contextmanager
def another_gateway(
    mesh: Mesh, run_dir: Path, env: dict[str, str], *, accounts: str = "", retention: str = ""
) -> Iterator[ServiceProcess]:
    """A second gateway on the session's inference, accounts and retention (or the `accounts`
    and `retention` addresses given, say a fault proxy's), with its own environment (say,
    other prices or limits); stopped, and its exit checked, on the way out."""
    gateway = gateway_process(
        run_dir,
        env,
        inference=mesh.inference.address,
        accounts=accounts or mesh.accounts.address,
        retention=retention or mesh.retention.address,
        pki=mesh.pki,
    )
    gateway.start()
    try:
        gateway.wait_serving()
        yield gateway
    finally:
        assert gateway.stop() == 0


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.fixture(scope="session")
def astronaut_jpeg(astronaut: Image.Image) -> bytes:
    return encode(astronaut, "JPEG", quality=92)


# PostgreSQL: the server on this machine (trust auth), or CUTOUT_TEST_POSTGRES_URL. Each
# session creates its own database and drops it at the end, so runs never collide.
POSTGRES_URL = os.environ.get("CUTOUT_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    import psycopg
    from sqlalchemy.engine import make_url

    base = make_url(POSTGRES_URL)
    dsn = base.set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        admin = psycopg.connect(dsn, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as error:
        pytest.skip(
            f"PostgreSQL not reachable at {base.host}:{base.port} ({type(error).__name__}); "
            "set CUTOUT_TEST_POSTGRES_URL to run these tests against another server"
        )
    name = f"cutout_test_{secrets.token_hex(6)}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield base.set(database=name).render_as_string(hide_password=False)
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3-compatible server (moto) on loopback, for the blob store tests."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def photo_variants(astronaut: Image.Image, count: int, seed: int = 5) -> list[bytes]:
    """`count` different real photos: crops, scales, flips and formats of the astronaut."""
    chooser = random.Random(seed)
    photos = []
    for _ in range(count):
        left, top = chooser.randrange(0, 160), chooser.randrange(0, 120)
        size = chooser.randrange(200, 512 - max(left, top))
        image = astronaut.crop((left, top, left + size, top + size)).resize((chooser.randrange(96, 320),) * 2)
        if chooser.random() < 0.5:
            image = ImageOps.mirror(image)
        fmt = chooser.choice(["JPEG", "PNG", "WEBP"])
        photos.append(encode(image, fmt, **({"quality": 85} if fmt != "PNG" else {})))
    return photos
