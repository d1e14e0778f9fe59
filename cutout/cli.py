"""The `cutout` command line.

cutout remove photo.jpg -o photo.png [--format webp] [--background '#1e90ff'] [--crop --margin 24]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc

from cutout.client import DEFAULT_GATEWAY, CutoutClient
from cutout.v1 import options_pb2

FORMATS = {
    "png": (options_pb2.OUTPUT_FORMAT_PNG, ".png"),
    "webp": (options_pb2.OUTPUT_FORMAT_WEBP, ".webp"),
    "mask": (options_pb2.OUTPUT_FORMAT_MASK, ".png"),
    "jpeg": (options_pb2.OUTPUT_FORMAT_JPEG_ON_COLOR, ".jpg"),
    "png-on-color": (options_pb2.OUTPUT_FORMAT_PNG_ON_COLOR, ".png"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cutout", description="Cutout background removal client")
    parser.add_argument("--gateway", help=f"gateway address (env CUTOUT_GATEWAY, default {DEFAULT_GATEWAY})")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for an answer")
    commands = parser.add_subparsers(dest="command", required=True)

    remove = commands.add_parser("remove", help="remove the background of one image")
    remove.add_argument("input", type=Path, help="a JPEG, PNG or WebP file")
    remove.add_argument("-o", "--output", type=Path, help="where to write the result (default: <input>-cutout.<ext>)")
    remove.add_argument(
        "--format",
        choices=sorted(FORMATS),
        default="png",
        help="png/webp: transparent background; mask: the alpha matte; jpeg/png-on-color: subject on --background",
    )
    remove.add_argument("--background", default="", help="CSS colour for jpeg and png-on-color (default white)")
    remove.add_argument("--crop", action="store_true", help="crop to the subject")
    remove.add_argument("--margin", type=int, default=0, help="pixels kept around the subject with --crop")
    remove.add_argument("--max-width", type=int, default=0, help="scale down to at most this width")
    remove.add_argument("--max-height", type=int, default=0, help="scale down to at most this height")
    remove.add_argument("--quality", type=int, default=0, help="JPEG/WebP quality 1-100 (0: server default)")
    remove.add_argument("--effort", type=int, default=0, help="compression effort 1 (fast) to 9 (small); 0: default")
    return parser


def remove(args: argparse.Namespace) -> int:
    output_format, extension = FORMATS[args.format]
    options = options_pb2.RemoveBackgroundOptions(
        format=output_format,
        background_color=args.background,
        crop_to_subject=args.crop,
        crop_margin_px=args.margin,
        max_width=args.max_width,
        max_height=args.max_height,
        quality=args.quality,
        compression_effort=args.effort,
    )
    output = args.output or args.input.with_name(f"{args.input.stem}-cutout{extension}")
    with CutoutClient(args.gateway) as client:
        response = client.remove_background(args.input.read_bytes(), options, timeout_s=args.timeout)
    output.write_bytes(response.result.image)
    result, timings = response.result, response.timings
    print(
        f"{output}: {result.width}x{result.height} {result.media_type}, "
        f"{result.foreground_fraction:.0%} kept, {timings.total_ms:.0f} ms"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "remove":
            return remove(args)
    except grpc.RpcError as error:
        print(f"cutout: {error.code().name}: {error.details()}", file=sys.stderr)  # type: ignore[attr-defined]
        return 1
    except OSError as error:
        print(f"cutout: {error}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
