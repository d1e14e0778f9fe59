"""atheris harness: image bytes through the gateway's header check (validation.check_image) and
inference's decode (imaging.open_image, then prepare: decode_with_alpha, resize, model input),
at full size and as a preview (JPEG draft decoding). Any outcome other than a result or
INVALID_ARGUMENT on `image` is a finding. Run: python -m fuzz.decode CORPUS_DIR... [libFuzzer flags]"""

from __future__ import annotations

import sys

import atheris

# Coverage from Pillow and our code (protobuf, gRPC and numpy stay uninstrumented: speed).
with atheris.instrument_imports(include=["PIL", "services", "fuzz"]):
    from PIL import Image

    from cutout.v1 import options_pb2
    from fuzz.common import TinyProfile, refused_properly
    from services.common import output_spec
    from services.common.errors import ServiceError
    from services.gateway import validation
    from services.inference import imaging

# The service's byte cap; a lower pixel cap than the service's 25 MP keeps an execution fast
# (the check is the same code whatever the figure).
LIMITS = imaging.DecodeLimits(max_bytes=50 * 2**20, max_pixels=2_000_000)
DEFAULTS = output_spec.EncoderDefaults()
SPECS = [
    output_spec.OutputSpec.from_proto(options_pb2.RemoveBackgroundOptions(), DEFAULTS),
    output_spec.OutputSpec.from_proto(options_pb2.RemoveBackgroundOptions(size=options_pb2.SIZE_PREVIEW), DEFAULTS),
    output_spec.OutputSpec.from_proto(options_pb2.RemoveBackgroundOptions(max_width=7, max_height=5), DEFAULTS),
]
PROFILE = TinyProfile()


def one_input(data: bytes) -> None:
    header_ok = True
    try:
        validation.check_image(data, LIMITS.max_bytes)
    except ServiceError as error:
        refused_properly(error, ("image",))
        header_ok = False
    try:
        header = imaging.open_image(data, LIMITS)
    except ServiceError as error:
        refused_properly(error, ("image",))
        # The gateway's check must not let through what inference refuses by its header alone
        # (then the request would be reserved for nothing), bar inference's pixel cap.
        assert not header_ok or error.reason == "IMAGE_TOO_LARGE", ("gateway passed a header", error.message)
        return
    spec = SPECS[len(data) % len(SPECS)]
    try:
        prepared = imaging.prepare(header, spec, PROFILE)
    except ServiceError as error:
        refused_properly(error, ("image",))
        return
    assert header_ok, "inference decoded what the gateway refused"
    assert prepared.image.mode == "RGB"
    assert prepared.input_alpha is None or prepared.input_alpha.size == prepared.image.size
    assert not prepared.image.info, "metadata left on the pixels"


def main() -> None:
    Image.MAX_IMAGE_PIXELS = None
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
