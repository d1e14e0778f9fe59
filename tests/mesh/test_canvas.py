"""The fixed canvas (issue #29: output_size) through the real mesh and the CLI: the output is
exactly W x H, the subject inside the padding, placed as `position` says."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from cutout.v1 import cutout_pb2, options_pb2
from tests.conftest import decode
from tests.mesh.test_cli import run_cli

Opts = options_pb2.RemoveBackgroundOptions


def _matte(gateway, image: bytes, **options: object) -> np.ndarray:
    options.setdefault("format", options_pb2.OUTPUT_FORMAT_MASK)
    request = cutout_pb2.RemoveBackgroundRequest(image=image, options=Opts(**options))
    result = gateway.RemoveBackground(request, timeout=120).result
    matte = decode(result.image)
    assert (result.width, result.height) == matte.size
    return np.asarray(matte.convert("L"))


def _box(alpha: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(alpha >= 128)
    return int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1


@pytest.mark.parametrize("size", [(800, 600), (300, 900)])
def test_exactly_w_by_h_with_the_subject_inside_the_padding(gateway, astronaut_png: bytes, size: tuple[int, int]):
    width, height = size
    padding = options_pb2.Margins(top=40, right=30, bottom=60, left=20)
    alpha = _matte(
        gateway, astronaut_png, output_size=options_pb2.OutputSize(width=width, height=height, padding=padding)
    )
    assert alpha.shape == (height, width)
    left, top, right, bottom = _box(alpha)
    assert left >= 20 and top >= 40 and right <= width - 30 and bottom <= height - 60
    # Fitted: it touches the padding on one axis, and is centred on the other (the default).
    room_w, room_h = width - 50, height - 100
    assert (right - left) >= room_w - 3 or (bottom - top) >= room_h - 3
    centre_x, centre_y = (left + right) / 2, (top + bottom) / 2
    assert abs(centre_x - (20 + room_w / 2)) <= 3 and abs(centre_y - (40 + room_h / 2)) <= 3


def test_position_and_padding_percent(gateway, astronaut_png: bytes):
    canvas = options_pb2.OutputSize(width=1000, height=500, padding_percent=10)  # 100 px left/right, 50 top/bottom
    alpha = _matte(gateway, astronaut_png, output_size=canvas, position=options_pb2.POSITION_PERCENT)  # 0%, 0%
    left, top, right, bottom = _box(alpha)
    assert alpha.shape == (500, 1000) and abs(left - 100) <= 2 and abs(top - 50) <= 2 and right <= 900
    half = _matte(gateway, astronaut_png, output_size=canvas, scale=50)
    left, top, right, bottom = _box(half)
    assert abs((bottom - top) - 200) <= 4  # half the 400 px of room, the box being taller than wide here


def test_opaque_and_refused(gateway, astronaut_png: bytes):
    request = cutout_pb2.RemoveBackgroundRequest(
        image=astronaut_png,
        options=Opts(
            format=options_pb2.OUTPUT_FORMAT_JPEG_ON_COLOR,
            background_color="#ff0000",
            output_size=options_pb2.OutputSize(width=640, height=480, padding_percent=5),
        ),
    )
    picture = decode(gateway.RemoveBackground(request, timeout=120).result.image)
    assert picture.size == (640, 480) and picture.getpixel((2, 2))[0] > 230  # the colour in the padding
    for bad in [
        options_pb2.OutputSize(width=100, height=100, padding=options_pb2.Margins(left=50, right=50)),
        options_pb2.OutputSize(width=0, height=100),
        options_pb2.OutputSize(width=100, height=100, padding_percent=46),
        options_pb2.OutputSize(width=6000, height=6000),
    ]:
        with pytest.raises(grpc.RpcError) as caught:
            gateway.RemoveBackground(
                cutout_pb2.RemoveBackgroundRequest(image=astronaut_png, options=Opts(output_size=bad)), timeout=60
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as caught:
        gateway.RemoveBackground(
            cutout_pb2.RemoveBackgroundRequest(
                image=astronaut_png,
                options=Opts(output_size=options_pb2.OutputSize(width=200, height=200), crop_to_subject=True),
            ),
            timeout=60,
        )
    assert "crop_to_subject" in caught.value.details()


def test_the_cli_makes_a_fixed_canvas(mesh, funded_account, astronaut_png: bytes, tmp_path):
    photo = tmp_path / "a.png"
    photo.write_bytes(astronaut_png)
    out = tmp_path / "framed.png"
    done = run_cli(
        mesh,
        "remove",
        str(photo),
        "-o",
        str(out),
        "--canvas",
        "700x400",
        "--padding",
        "25",
        "--format",
        "mask",
        # The fine level's matte: the fast one's faint flag reaches the frame's edge at about half
        # opacity, and resampling it moves its box by a pixel either way.
        "--detail",
        "fine",
        api_key=funded_account.api_key,
    )
    assert done.returncode == 0, done.stderr
    alpha = np.asarray(decode(out.read_bytes()).convert("L"))
    left, top, right, bottom = _box(alpha)
    assert alpha.shape == (400, 700) and top >= 25 and bottom <= 375 and left >= 25 and right <= 675
