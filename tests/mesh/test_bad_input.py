"""Bad input gets INVALID_ARGUMENT with a message that says what to fix, and details."""

from __future__ import annotations

import struct
import zlib

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2

from cutout.v1 import cutout_pb2, options_pb2
from services.common.errors import error_details
from services.common.settings import MIB


def png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height; its pixel data is a few bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def call(gateway, image: bytes, **options: object) -> grpc.RpcError:
    request = cutout_pb2.RemoveBackgroundRequest(image=image, options=options_pb2.RemoveBackgroundOptions(**options))
    with pytest.raises(grpc.RpcError) as caught:
        gateway.RemoveBackground(request, timeout=60)
    return caught.value


def field_violations(error: grpc.RpcError) -> list[str]:
    return [
        violation.field
        for detail in error_details(error)
        if isinstance(detail, error_details_pb2.BadRequest)
        for violation in detail.field_violations
    ]


def reasons(error: grpc.RpcError) -> list[str]:
    return [detail.reason for detail in error_details(error) if isinstance(detail, error_details_pb2.ErrorInfo)]


@pytest.mark.parametrize(
    ("name", "make_image", "words"),
    [
        ("empty", lambda photo: b"", "image is empty"),
        ("random bytes", lambda photo: bytes(range(256)) * 64, "not a JPEG, PNG or WebP"),
        ("truncated JPEG", lambda photo: photo[: len(photo) // 2], "corrupt or truncated"),
        ("100000x100000 header", lambda photo: png_header_claiming(100_000, 100_000), "megapixels"),
    ],
)
def test_bad_images(gateway, astronaut_jpeg, name, make_image, words):
    error = call(gateway, make_image(astronaut_jpeg))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, name
    assert words in error.details(), error.details()
    assert field_violations(error) == ["image"]


def test_header_over_the_pixel_limit_says_the_size_and_the_limit(gateway):
    error = call(gateway, png_header_claiming(100_000, 100_000))
    assert "100000x100000" in error.details() and "limit is 25 megapixels" in error.details()
    assert reasons(error) == ["IMAGE_TOO_LARGE"]


def test_file_over_the_byte_limit(gateway):
    error = call(gateway, b"\xff\xd8\xff" + bytes(50 * MIB + 1024))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "limit is 50 MiB" in error.details()
    assert reasons(error) == ["IMAGE_TOO_LARGE"]


def test_a_message_far_over_the_byte_limit_is_refused_by_the_public_port_itself(gateway):
    """Past the input cap plus framing, the gateway refuses the message from its length,
    before reading it (tests/mesh/test_tls.py measures the memory this saves)."""
    error = call(gateway, b"\xff\xd8\xff" + bytes(51 * MIB))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in error.details()


def test_unknown_output_format(gateway, astronaut_jpeg):
    error = call(gateway, astronaut_jpeg, format=99)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown output format 99" in error.details() and "OUTPUT_FORMAT_WEBP" in error.details()
    assert field_violations(error) == ["options.format"]


def test_background_colour_that_does_not_parse(gateway, astronaut_jpeg):
    error = call(gateway, astronaut_jpeg, format=options_pb2.OUTPUT_FORMAT_JPEG_ON_COLOR, background_color="#12345z")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'#12345z' is not a colour" in error.details()
    assert field_violations(error) == ["options.background_color"]


@pytest.mark.parametrize(
    ("options", "field"),
    [({"compression_effort": 10}, "options.compression_effort"), ({"quality": 101}, "options.quality")],
)
def test_encoder_settings_out_of_range(gateway, astronaut_jpeg, options, field):
    error = call(gateway, astronaut_jpeg, **options)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(error) == [field]


def test_a_time_to_live_that_is_not_positive(gateway, astronaut_jpeg):
    error = call(gateway, astronaut_jpeg, keep_result=True, keep_ttl=duration_pb2.Duration(seconds=-60))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "keep_ttl must be positive" in error.details()
    assert field_violations(error) == ["options.keep_ttl"]
