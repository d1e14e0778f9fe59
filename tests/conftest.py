"""Session-wide real parts: the astronaut photo, and one mesh (Triton + inference + gateway)."""

from __future__ import annotations

import io
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from PIL import Image

from cutout.v1 import cutout_pb2_grpc
from services.common.assets import ASTRONAUT
from services.common.channels import channel_options
from services.inference.model import fetch_default_model
from services.mesh import ROOT, Mesh, free_port

CACHE = ROOT / ".cache"


@pytest.fixture(scope="session")
def astronaut_png() -> bytes:
    return ASTRONAUT.fetch(CACHE / "samples" / "astronaut.png").read_bytes()


@pytest.fixture(scope="session")
def astronaut(astronaut_png: bytes) -> Image.Image:
    return Image.open(io.BytesIO(astronaut_png)).convert("RGB")


@pytest.fixture(scope="session")
def model_path() -> Path:
    return fetch_default_model()


@pytest.fixture(scope="session")
def mesh(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Iterator[Mesh]:
    mesh = Mesh(data_dir=tmp_path_factory.mktemp("mesh"))
    mesh.start()
    yield mesh
    statuses = mesh.stop()
    assert all(code == 0 for code in statuses.values()), statuses
    for service in mesh.services:
        assert "--- Logging error ---" not in service.log_path.read_text(), f"see {service.log_path}"


@pytest.fixture(scope="session")
def gateway_channel(mesh: Mesh) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(mesh.gateway.address, options=channel_options()) as channel:
        yield channel


@pytest.fixture(scope="session")
def gateway(gateway_channel: grpc.Channel) -> cutout_pb2_grpc.CutoutStub:
    return cutout_pb2_grpc.CutoutStub(gateway_channel)


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
