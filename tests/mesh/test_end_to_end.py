"""A real photo through gateway -> inference -> Triton (the real model) and back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter
from PIL import Image

from cutout.v1 import cutout_pb2, options_pb2
from services.inference.model import SELFIE_SEGMENTATION
from tests.conftest import decode, encode

# Regions of the 512x512 astronaut photo: her face, and the empty backdrop top right.
FACE = (slice(90, 170), slice(180, 260))
BACKDROP = (slice(0, 80), slice(430, 512))


def litert_mask(image: Image.Image, model_path: str) -> np.ndarray:
    """The model run directly, no mesh: stretched to 256x256, [0,1] floats, mask upsampled."""
    interpreter = Interpreter(model_path=model_path)
    interpreter.allocate_tensors()
    tensor = np.asarray(image.resize((256, 256), Image.Resampling.BILINEAR), np.float32)[None] / 255
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], tensor)
    interpreter.invoke()
    mask = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[0, :, :, 0]
    return np.asarray(Image.fromarray(mask, "F").resize(image.size, Image.Resampling.BILINEAR))


def remove(gateway, image: bytes, **options: object) -> cutout_pb2.RemoveBackgroundResponse:
    request = cutout_pb2.RemoveBackgroundRequest(image=image, options=options_pb2.RemoveBackgroundOptions(**options))
    return gateway.RemoveBackground(request, timeout=120)


def test_person_kept_background_gone_and_matches_litert(gateway, astronaut_png, astronaut, model_paths):
    response = remove(gateway, astronaut_png)
    result = response.result
    assert (result.width, result.height, result.media_type) == (512, 512, "image/png")
    assert result.model == "selfie_segmentation", "AUTO keeps the fast person model for a portrait"
    cutout = decode(result.image)
    assert cutout.mode == "RGBA"
    alpha = np.asarray(cutout.getchannel("A"), np.float32) / 255

    assert alpha[FACE].mean() > 0.95, "the person must be kept"
    assert alpha[BACKDROP].mean() < 0.05, "the background must be gone"
    # Where the subject is opaque, its colours are the photo's own.
    opaque = alpha > 0.99
    rgb = np.asarray(cutout.convert("RGB"), np.int16)
    assert np.abs(rgb[opaque] - np.asarray(astronaut, np.int16)[opaque]).max() <= 1

    ours = alpha >= 0.5
    reference = litert_mask(astronaut, str(SELFIE_SEGMENTATION.path())) >= 0.5
    iou = (ours & reference).sum() / (ours | reference).sum()
    assert iou >= 0.97, f"IoU with LiteRT run directly is {iou:.3f}"
    assert result.foreground_fraction == pytest.approx(alpha.mean(), abs=0.01)


def test_timings_describe_the_stages(gateway, astronaut_png):
    timings = remove(gateway, astronaut_png).timings
    for stage in ("decode_ms", "preprocess_ms", "model_ms", "postprocess_ms", "encode_ms"):
        assert getattr(timings, stage) > 0, stage
    assert timings.total_ms >= timings.decode_ms + timings.model_ms + timings.encode_ms
    assert timings.batch_size >= 1


@pytest.mark.parametrize(
    ("fmt", "media_type", "mode"),
    [
        (options_pb2.OUTPUT_FORMAT_PNG, "image/png", "RGBA"),
        (options_pb2.OUTPUT_FORMAT_WEBP, "image/webp", "RGBA"),
        (options_pb2.OUTPUT_FORMAT_MASK, "image/png", "L"),
        (options_pb2.OUTPUT_FORMAT_JPEG_ON_COLOR, "image/jpeg", "RGB"),
        (options_pb2.OUTPUT_FORMAT_PNG_ON_COLOR, "image/png", "RGB"),
    ],
)
def test_output_formats(gateway, astronaut_png, fmt, media_type, mode):
    result = remove(gateway, astronaut_png, format=fmt, background_color="#1e90ff").result
    image = decode(result.image)
    assert (result.media_type, image.mode, image.size) == (media_type, mode, (512, 512))
    pixels = np.asarray(image, np.int16)
    if mode == "RGB":  # subject on the colour: the backdrop is that colour
        assert np.abs(pixels[BACKDROP].mean(axis=(0, 1)) - (0x1E, 0x90, 0xFF)).max() < 6
    elif mode == "L":
        assert pixels[FACE].mean() > 240 and pixels[BACKDROP].mean() < 15
    else:
        assert pixels[BACKDROP][..., 3].mean() < 15


def test_crop_to_subject_with_margin(gateway, astronaut_png):
    mask = decode(remove(gateway, astronaut_png, format=options_pb2.OUTPUT_FORMAT_MASK).result.image)
    left, top, right, bottom = mask.point(lambda v: 255 if v >= 128 else 0).getbbox()
    result = remove(gateway, astronaut_png, crop_to_subject=True, crop_margin_px=10).result
    expected = (min(512, right + 10) - max(0, left - 10), min(512, bottom + 10) - max(0, top - 10))
    assert (result.width, result.height) == expected
    assert decode(result.image).size == expected
    assert expected != (512, 512), "the astronaut does not fill the frame; cropping must shrink it"


def test_max_output_size_keeps_aspect(gateway, astronaut_png):
    result = remove(gateway, astronaut_png, max_width=200, max_height=300).result
    assert (result.width, result.height) == (200, 200)
    assert decode(result.image).size == (200, 200)
    # Never scaled up.
    result = remove(gateway, astronaut_png, max_width=4000).result
    assert (result.width, result.height) == (512, 512)


def _minor_faults(pid: int) -> int:
    # /proc/<pid>/stat: minflt is the 10th field; the 2nd (the command) may hold spaces.
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])


def test_inference_reuses_freed_memory_instead_of_faulting_it_in_per_request(gateway, mesh, astronaut):
    """services/common/memory.py: measured ~2,600 minor page faults per 1 MP cut-out with
    glibc's defaults (and 30 % more CPU in the guided filter), about 50 with the setting."""
    photo = encode(astronaut.resize((1024, 1024)), "JPEG", quality=90)
    for _ in range(3):  # the first requests grow the heap to its working size
        remove(gateway, photo)
    pid = mesh.inference.process.pid
    before = _minor_faults(pid)
    for _ in range(5):
        remove(gateway, photo)
    per_request = (_minor_faults(pid) - before) / 5
    assert per_request < 500, f"{per_request:.0f} page faults per 1 MP request"
