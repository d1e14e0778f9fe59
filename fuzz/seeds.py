"""Writes the seed corpus (fuzz/corpus/<harness>/): tiny images of every mode the accepted
formats decode to, broken ones, and serialized option messages. The files are committed;
this script says how they were made. Run: python -m fuzz.seeds"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

from google.protobuf import duration_pb2
from PIL import Image, ImageCms

from cutout.v1 import options_pb2

CORPUS = Path(__file__).resolve().parent / "corpus"
pb = options_pb2


def _save(image: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def _png16(colour_type: int, channels: int, size: tuple[int, int] = (5, 4)) -> bytes:
    """A 16-bit-per-channel PNG written by hand (Pillow writes 16 bits only for greyscale)."""
    width, height = size
    rows = b"".join(
        b"\0"
        + b"".join(
            struct.pack(">H", (x * 9000 + y * 4000 + c * 1000) % 65536) for x in range(width) for c in range(channels)
        )
        for y in range(height)
    )

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def images() -> dict[str, bytes]:
    rgb = Image.radial_gradient("L").resize((8, 6)).convert("RGB")
    rgb.putpixel((2, 2), (200, 30, 90))
    rgba = rgb.copy()
    rgba.putalpha(Image.linear_gradient("L").resize((8, 6)))
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    grey16 = Image.linear_gradient("L").resize((6, 5)).point(lambda v: v * 257, "I")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotated 90 degrees
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    seeds = {
        "rgb.png": _save(rgb, "PNG"),
        "rgba.png": _save(rgba, "PNG"),
        "l.png": _save(rgb.convert("L"), "PNG"),
        "la.png": _save(rgba.convert("LA"), "PNG"),
        "1bit.png": _save(rgb.convert("1"), "PNG"),
        "palette-trns.png": _save(palette, "PNG", transparency=0),
        "palette-rgba.png": _save(rgba.convert("PA").convert("P"), "PNG", transparency=1),
        "i16-grey.png": _save(grey16.convert("I;16"), "PNG"),
        "rgb16.png": _png16(2, 3),
        "rgba16.png": _png16(6, 4),
        "la16.png": _png16(4, 2),
        "icc.png": _save(rgb, "PNG", icc_profile=srgb),
        "rgb.jpg": _save(rgb, "JPEG", quality=80),
        "l.jpg": _save(rgb.convert("L"), "JPEG"),
        "cmyk.jpg": _save(rgb.convert("CMYK"), "JPEG"),
        "exif6.jpg": _save(rgb, "JPEG", exif=exif),
        "icc.jpg": _save(rgb, "JPEG", icc_profile=srgb),
        "progressive.jpg": _save(rgb.resize((40, 30)), "JPEG", progressive=True),
        "lossy.webp": _save(rgb, "WEBP", quality=50),
        "lossless-rgba.webp": _save(rgba, "WEBP", lossless=True),
        "exif6.webp": _save(rgb, "WEBP", exif=exif),
    }
    seeds["truncated.png"] = seeds["rgb.png"][: len(seeds["rgb.png"]) // 2]
    seeds["truncated.jpg"] = seeds["progressive.jpg"][: len(seeds["progressive.jpg"]) * 2 // 3]
    seeds["truncated.webp"] = seeds["lossy.webp"][:30]
    seeds["signature-only.png"] = b"\x89PNG\r\n\x1a\n"
    seeds["soi-only.jpg"] = b"\xff\xd8\xff"
    return seeds


def options() -> dict[str, bytes]:
    backdrop = _save(Image.linear_gradient("L").resize((6, 6)).convert("RGB"), "PNG")
    ttl = duration_pb2.Duration(seconds=3600)
    seeds = {
        "empty": pb.RemoveBackgroundOptions(),
        "webp-quality": pb.RemoveBackgroundOptions(format=pb.OUTPUT_FORMAT_WEBP, quality=70, compression_effort=6),
        "mask": pb.RemoveBackgroundOptions(format=pb.OUTPUT_FORMAT_MASK, max_width=20),
        "on-colour": pb.RemoveBackgroundOptions(
            format=pb.OUTPUT_FORMAT_JPEG_ON_COLOR, background_color="rgb(30,144,255)"
        ),
        "auto-hex": pb.RemoveBackgroundOptions(format=pb.OUTPUT_FORMAT_AUTO, background_color="#1e90ff"),
        "pair": pb.RemoveBackgroundOptions(format=pb.OUTPUT_FORMAT_COLOR_ALPHA_PAIR, add_shadow=True),
        "crop": pb.RemoveBackgroundOptions(crop_to_subject=True, crop_margin_px=3, max_height=10),
        "crop-percent": pb.RemoveBackgroundOptions(crop_to_subject=True, crop_margin_percent=20),
        "placed": pb.RemoveBackgroundOptions(
            scale=60, position=pb.POSITION_PERCENT, position_x_percent=10, position_y_percent=90
        ),
        "backdrop": pb.RemoveBackgroundOptions(
            format=pb.OUTPUT_FORMAT_PNG_ON_COLOR, background_image=backdrop, background_fit=pb.BACKGROUND_FIT_FIT
        ),
        "blur": pb.RemoveBackgroundOptions(format=pb.OUTPUT_FORMAT_AUTO, blur_background=True, clean_edges=True),
        "roi": pb.RemoveBackgroundOptions(roi=pb.Rect(left=4, top=3, width=20, height=20), size=pb.SIZE_PREVIEW),
        "keep": pb.RemoveBackgroundOptions(keep_result=True, keep_ttl=ttl, subject=pb.SUBJECT_ANY),
        "model": pb.RemoveBackgroundOptions(model="u2netp", size=pb.SIZE_AUTO),
        "huge-colour": pb.RemoveBackgroundOptions(
            format=pb.OUTPUT_FORMAT_AUTO, background_color="rgb(99999999999,0,0)"
        ),
        "huge-ttl": pb.RemoveBackgroundOptions(keep_ttl=duration_pb2.Duration(seconds=2**62, nanos=5)),
        "bad-enums": pb.RemoveBackgroundOptions(format=99, size=77, position=9, subject=12, background_fit=5),
    }
    return {name: message.SerializeToString() for name, message in seeds.items()}


def main() -> None:
    for harness, files in (("decode", images()), ("options", options())):
        folder = CORPUS / harness
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (folder / name).write_bytes(data)
        print(f"{folder}: {len(files)} files, {sum(map(len, files.values()))} bytes")


if __name__ == "__main__":
    main()
