"""What a removal or an erase is refused for before any credit is reserved: its options,
its keep_ttl and its image's header (inference checks the pixels themselves).

A body that is no picture, or an impossible option, therefore writes no ledger entry. The
checks read headers and options only; they run in a worker thread (Pillow parses headers).
"""

from __future__ import annotations

import io
from datetime import timedelta

from PIL import Image, UnidentifiedImageError

from cutout.v1 import erase_pb2, options_pb2
from services.common import output_spec
from services.common.errors import invalid_argument

# keep_ttl beyond this is nonsense whatever the plan (retention checks the plan's own cap).
MAX_KEEP_TTL = timedelta(days=3650)


def check_image(data: bytes, max_bytes: int, field: str = "image") -> None:
    """Refuses what is too large or no JPEG, PNG or WebP by its header (inference checks pixels)."""
    if not data:
        raise invalid_argument(f"{field} is empty; send the bytes of a JPEG, PNG or WebP file", field=field)
    if len(data) > max_bytes:
        raise invalid_argument(
            f"{field} is {len(data) / 2**20:.1f} MiB; the limit is {max_bytes / 2**20:.0f} MiB. Send a smaller file.",
            field=field,
            reason="IMAGE_TOO_LARGE",
        )
    try:
        with Image.open(io.BytesIO(data), formats=output_spec.ACCEPTED_FORMATS):
            pass
    except Image.DecompressionBombError:
        pass  # a readable header of a huge picture: inference refuses it, saying its size and the limit
    except UnidentifiedImageError:
        raise invalid_argument(
            f"{field} is not a JPEG, PNG or WebP file (its first bytes match none of them)", field=field
        ) from None
    except output_spec.CORRUPT_DATA as error:
        raise invalid_argument(f"{field} header could not be read: {error}", field=field) from None


def check_options(options: options_pb2.RemoveBackgroundOptions) -> None:
    """The output options and the subject, without the pictures."""
    output_spec.OutputSpec.from_proto(options, output_spec.EncoderDefaults())
    output_spec.check_subject(options)


def check_removal(image: bytes, options: options_pb2.RemoveBackgroundOptions, max_bytes: int) -> None:
    """What a removal can be refused for without decoding a pixel: its options and image header."""
    output_spec.OutputSpec.from_proto(options, output_spec.EncoderDefaults())
    output_spec.check_subject(options)
    if options.HasField("keep_ttl"):
        ttl = options.keep_ttl
        if ttl.seconds < 0 or ttl.nanos < 0 or (ttl.seconds == 0 and ttl.nanos == 0):
            raise invalid_argument(
                "keep_ttl must be positive; leave it unset for the default", field="options.keep_ttl"
            )
        if ttl.seconds > MAX_KEEP_TTL.total_seconds():
            raise invalid_argument(
                f"keep_ttl of {ttl.seconds} s is beyond any plan's limit; give at most {MAX_KEEP_TTL.days} days "
                "(your plan may allow less), or leave it unset for the default",
                field="options.keep_ttl",
            )
    if options.background_image:
        check_image(options.background_image, max_bytes, "options.background_image")
    check_image(image, max_bytes)


def check_erase(request: erase_pb2.EraseRegionsRequest, max_bytes: int) -> None:
    check_image(request.image, max_bytes)
