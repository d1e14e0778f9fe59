"""services/edge/removebg.py: remove.bg's parameters as Cutout options, and what is refused."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from cutout.v1 import options_pb2
from services.edge.body import Fields, parse
from services.edge.removebg import Refused, translate


def _png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (10, 20, 30)).save(out, "PNG")
    return out.getvalue()


PNG = _png(4, 2)


def options(**text: str) -> options_pb2.RemoveBackgroundOptions:
    return translate(Fields(text=text, files={"image_file": PNG})).request.options


def test_defaults_are_remove_bg_s():
    got = options()
    assert got.size == options_pb2.SIZE_PREVIEW and got.subject == options_pb2.SUBJECT_AUTO
    assert got.format == options_pb2.OUTPUT_FORMAT_AUTO and not got.crop_to_subject


def test_mapping():
    got = options(size="full", type="product", format="png", bg_color="81d4fa", crop="true", crop_margin="10%")
    assert got.size == options_pb2.SIZE_FULL and got.subject == options_pb2.SUBJECT_ANY
    assert got.format == options_pb2.OUTPUT_FORMAT_PNG_ON_COLOR and got.background_color == "#81d4fa"
    assert got.crop_to_subject and got.crop_margin_percent == 10
    assert options(crop="true", crop_margin="30px").crop_margin_px == 30
    assert options(channels="alpha").format == options_pb2.OUTPUT_FORMAT_MASK
    assert options(format="jpg").format == options_pb2.OUTPUT_FORMAT_JPEG_ON_COLOR
    placed = options(scale="80%", position="20% 70%")
    assert (placed.scale, placed.position) == (80, options_pb2.POSITION_PERCENT)
    assert (placed.position_x_percent, placed.position_y_percent) == (20, 70)
    assert options(scale="50%").position == options_pb2.POSITION_ORIGINAL
    roi = options(roi="1 0 3 2").roi
    assert (roi.left, roi.top, roi.width, roi.height) == (1, 0, 2, 2)
    roi = options(roi="50% 0% 100% 100%").roi  # of the picture's 4x2
    assert (roi.left, roi.width, roi.height) == (2, 2, 2)
    assert translate(Fields(text={"format": "zip"}, files={"image_file": PNG})).zipped
    assert options(bg_image_url="https://example.com/b.jpg").background_image_url == "https://example.com/b.jpg"


@pytest.mark.parametrize(
    "text",
    [
        {"size": "hd"},
        {"size": "medium"},
        {"type": "spaceship"},
        {"type_level": "2"},
        {"format": "gif"},
        {"channels": "alpha", "format": "jpg"},
        {"channels": "alpha", "bg_color": "fff"},
        {"crop_margin": "10px"},
        {"crop": "true", "crop_margin": "10px 20px"},
        {"scale": "big"},
        {"position": "left"},
        {"roi": "1 2 3"},
        {"roi": "3 0 1 2"},
        {"semitransparency": "false"},
        {"add_shadow": "maybe"},
        {"unknown_option": "1"},
    ],
)
def test_refused(text: dict[str, str]):
    with pytest.raises(Refused):
        translate(Fields(text=text, files={"image_file": PNG}))


def test_exactly_one_source():
    with pytest.raises(Refused) as caught:
        translate(Fields())
    assert caught.value.code == "missing_source"
    with pytest.raises(Refused):
        translate(Fields(text={"image_url": "https://example.com/a.png"}, files={"image_file": PNG}))
    request = translate(Fields(text={"image_file_b64": base64.b64encode(PNG).decode()})).request
    assert request.image == PNG


def test_bodies():
    assert parse("application/json", b'{"crop": true, "size": "full"}').text == {"crop": "true", "size": "full"}
    assert parse("application/x-www-form-urlencoded", b"size=full&bg_color=fff").text["bg_color"] == "fff"
    multipart = (
        b'--b\r\nContent-Disposition: form-data; name="size"\r\n\r\nfull\r\n'
        b'--b\r\nContent-Disposition: form-data; name="image_file"; filename="a.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + PNG + b"\r\n--b--\r\n"
    )
    fields = parse("multipart/form-data; boundary=b", multipart)
    assert fields.text == {"size": "full"} and fields.files == {"image_file": PNG}
