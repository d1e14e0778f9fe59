"""Session-wide real parts: the astronaut photo, and one mesh (Triton + inference + gateway)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from PIL import Image

from cutout.v1 import cutout_pb2_grpc
from services.common.assets import ASTRONAUT
from services.common.channels import channel_options
from services.inference.model import fetch_default_model
from services.mesh import ROOT, Mesh

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
