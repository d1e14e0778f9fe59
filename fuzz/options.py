"""atheris harness: option validation. The input is a serialized RemoveBackgroundOptions (the
corpus holds real ones; libFuzzer mutates their bytes). The gateway's check before reserving
(validation.check_removal: OutputSpec.from_proto, keep_ttl, the background image's header) must
refuse with INVALID_ARGUMENT on an `options.*` field or let through options that then render:
a small picture is prepared and finished (crop, placement, scaling, shadow, background,
encoding) with them, where only INVALID_ARGUMENT on `options.roi` may still come (the roi is
checked against the picture's size). Run: python -m fuzz.options CORPUS_DIR... [libFuzzer flags]"""

from __future__ import annotations

import io
import sys

import atheris

# Coverage from Pillow and our code (protobuf, gRPC and numpy stay uninstrumented: speed).
with atheris.instrument_imports(include=["PIL", "services", "fuzz"]):
    from google.protobuf.message import DecodeError
    from PIL import Image

    from cutout.v1 import options_pb2
    from fuzz.common import TinyProfile, probability, refused_properly
    from services.common import output_spec
    from services.common.errors import ServiceError
    from services.gateway import validation
    from services.inference import imaging

LIMITS = imaging.DecodeLimits(max_bytes=50 * 2**20, max_pixels=250_000)
DEFAULTS = output_spec.EncoderDefaults()
PROFILE = TinyProfile()


def _picture() -> bytes:
    out = io.BytesIO()
    Image.radial_gradient("L").resize((48, 36)).convert("RGB").save(out, "PNG")
    return out.getvalue()


PICTURE = _picture()


def one_input(data: bytes) -> None:
    options = options_pb2.RemoveBackgroundOptions()
    try:
        options.ParseFromString(data)
    except DecodeError:
        return
    try:
        validation.check_removal(PICTURE, options, LIMITS.max_bytes)
        spec = output_spec.OutputSpec.from_proto(options, DEFAULTS)
        output_spec.check_subject(options)
    except ServiceError as error:
        refused_properly(error, ("options.",))
        return
    backdrop = None
    if spec.background_image:
        try:
            backdrop = imaging.open_image(options.background_image, LIMITS)
        except ServiceError as error:  # the pixel cap; the gateway checked the header
            refused_properly(error, ("image",))
            return
    try:
        prepared = imaging.prepare(imaging.open_image(PICTURE, LIMITS), spec, PROFILE, backdrop)
    except ServiceError as error:
        refused_properly(error, ("options.roi", "image"))
        return
    rendered, fraction = imaging.finish(prepared, probability(len(data)), spec)
    assert rendered.data and rendered.width >= 1 and rendered.height >= 1
    assert 0.0 <= fraction <= 1.0
    if spec.max_width:
        assert rendered.width <= spec.max_width
    if spec.max_height:
        assert rendered.height <= spec.max_height


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
