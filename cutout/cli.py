"""The `cutout` command line.

cutout signup --email me@example.com [--region eu] [--save]   # account + first API key
cutout keys create|list|revoke ID
cutout balance [--ledger 20]
cutout remove photo.jpg -o photo.png [--format webp] [--background '#1e90ff'] [--crop --margin 24] [--keep]
cutout remove photo.jpg --format pair [--zip]      # colour JPEG + alpha PNG (two files, or one zip)
cutout remove photo.jpg --size preview --format auto --background-image beach.jpg --scale 80 --shadow
cutout batch photos/ -o cutouts/ [--concurrency 16] [same options as remove]   # resumable
cutout erase photo.jpg (--mask marks.png | --box x,y,w,h ...) -o clean.png [--method auto|telea|ns|patch]
cutout erase-batch photos/ -o clean/ (--mask mark.png | --color white [--tolerance 40] [--within x,y,w,h]) [--box ...]
cutout results list|fetch (ID | --token TOKEN) -o FILE|delete ID
cutout account show|export -o FILE [--no-results]|access-log|name NAME|email NEW|delete
cutout account restrict [--off]|stats (--opt-out|--opt-in)
cutout admin lookup (ID | --email E)|grant ID AMOUNT|delete ID --reason R   # CUTOUT_ADMIN_ENDPOINT, _TOKEN

The API key comes from CUTOUT_API_KEY or the config file (~/.config/cutout/config.toml).
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import time
from datetime import UTC
from pathlib import Path

import grpc
from google.protobuf import timestamp_pb2

from cutout import batch as batches
from cutout import watermark
from cutout.client import DEFAULT_GATEWAY, CutoutClient, config_path, credits_text, open_channel, save_config, signed
from cutout.transport import ADMIN_TOKEN_METADATA
from cutout.v1 import account_pb2, cutout_pb2_grpc, erase_pb2, options_pb2, rights_pb2

FORMATS = {
    "png": (options_pb2.OUTPUT_FORMAT_PNG, ".png"),
    "webp": (options_pb2.OUTPUT_FORMAT_WEBP, ".webp"),
    "mask": (options_pb2.OUTPUT_FORMAT_MASK, ".png"),
    "jpeg": (options_pb2.OUTPUT_FORMAT_JPEG_ON_COLOR, ".jpg"),
    "png-on-color": (options_pb2.OUTPUT_FORMAT_PNG_ON_COLOR, ".png"),
    "auto": (options_pb2.OUTPUT_FORMAT_AUTO, ""),  # the extension follows the answer's media type
    "pair": (options_pb2.OUTPUT_FORMAT_COLOR_ALPHA_PAIR, ".jpg"),  # and <name>-alpha.png beside it
}
SUBJECTS = {
    "auto": options_pb2.SUBJECT_AUTO,
    "person": options_pb2.SUBJECT_PERSON,
    "any": options_pb2.SUBJECT_ANY,
}
# The edges' level: fine (the server's default, unless it sets another), balanced, fast.
DETAILS = {"fine": options_pb2.DETAIL_FINE, "balanced": options_pb2.DETAIL_BALANCED, "fast": options_pb2.DETAIL_FAST}
SIZES = {"preview": options_pb2.SIZE_PREVIEW, "full": options_pb2.SIZE_FULL, "auto": options_pb2.SIZE_AUTO}
FITS = {"cover": options_pb2.BACKGROUND_FIT_COVER, "fit": options_pb2.BACKGROUND_FIT_FIT}
EXTENSIONS = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp"}

ERASE_METHODS = {
    "auto": erase_pb2.ERASE_METHOD_AUTO,
    "telea": erase_pb2.ERASE_METHOD_TELEA,
    "ns": erase_pb2.ERASE_METHOD_NAVIER_STOKES,
    "patch": erase_pb2.ERASE_METHOD_PATCH,
}
ERASE_FORMATS = {
    "png": (erase_pb2.ERASE_FORMAT_PNG, ".png"),
    "jpeg": (erase_pb2.ERASE_FORMAT_JPEG, ".jpg"),
    "webp": (erase_pb2.ERASE_FORMAT_WEBP, ".webp"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cutout", description="Cutout background removal client")
    parser.add_argument("--gateway", help=f"gateway address (env CUTOUT_GATEWAY, default {DEFAULT_GATEWAY})")
    parser.add_argument(
        "--ca",
        type=Path,
        help="the CA file that signed the gateway's certificate (env CUTOUT_CA_FILE; default: "
        "the system's trusted roots)",
    )
    parser.add_argument(
        "--plaintext", action="store_true", help="no TLS (env CUTOUT_PLAINTEXT=1); allowed to this machine only"
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for an answer")
    commands = parser.add_subparsers(dest="command", required=True)

    remove = commands.add_parser("remove", help="remove the background of one image")
    remove.add_argument("input", type=Path, help="a JPEG, PNG or WebP file")
    remove.add_argument("-o", "--output", type=Path, help="where to write the result (default: <input>-cutout.<ext>)")
    _output_options(remove)

    batch = commands.add_parser(
        "batch", help="remove the backgrounds of a folder of images over one stream (resumes where it stopped)"
    )
    batch.add_argument("input", help="a folder (searched recursively), an image, or a quoted glob like 'shop/**/*.jpg'")
    batch.add_argument("-o", "--output", type=Path, required=True, help="the folder to write the results to")
    batch.add_argument("--concurrency", type=int, default=16, help="images in flight at once (default 16)")
    batch.add_argument("--no-progress", action="store_true", help="no progress bar")
    _output_options(batch)

    erase = commands.add_parser("erase", help="erase marked regions (watermarks, text, objects) of one image")
    erase.add_argument("input", type=Path, help="a JPEG, PNG or WebP file")
    erase.add_argument("--mask", type=Path, help="an image of the input's size, white where to erase")
    erase.add_argument("-o", "--output", type=Path, help="where to write the result (default: <input>-erased.<ext>)")
    _erase_options(erase)

    erase_batch = commands.add_parser(
        "erase-batch",
        help="erase the same watermark from a folder of images over one stream (resumes where it stopped)",
    )
    erase_batch.add_argument("input", help="a folder (searched recursively), an image, or a quoted glob")
    erase_batch.add_argument("-o", "--output", type=Path, required=True, help="the folder to write the results to")
    rule = erase_batch.add_mutually_exclusive_group()
    rule.add_argument("--mask", type=Path, help="one mask for all, white where to erase, stretched to each image")
    rule.add_argument("--color", help="erase pixels of this CSS colour (e.g. white, '#f0f0f0') in each image")
    erase_batch.add_argument("--tolerance", type=int, default=40, help="with --color: largest R/G/B difference")
    erase_batch.add_argument("--within", type=_box, help="with --color: only inside x,y,w,h")
    erase_batch.add_argument("--grow", type=int, default=1, help="with --color: widen the marks by N pixels")
    erase_batch.add_argument("--concurrency", type=int, default=16, help="images in flight at once (default 16)")
    erase_batch.add_argument("--no-progress", action="store_true", help="no progress bar")
    _erase_options(erase_batch)

    signup = commands.add_parser(
        "signup", help="ask for an account (a code goes to the e-mail); with --code, open it and make its first key"
    )
    signup.add_argument("--email", required=True)
    signup.add_argument("--code", default="", help="the code from the sign-up e-mail: opens the account")
    signup.add_argument("--name", default="", help="display name")
    signup.add_argument("--region", default="eu", help="where your data is processed and kept: eu or us (fixed)")
    signup.add_argument("--confirm-age", action="store_true", help="confirm that you are at least 13 years old")
    signup.add_argument("--marketing", action="store_true", help="receive marketing e-mails (off by default)")
    _password_and_save(signup)

    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", help="create a key (with your key or --email, and your password)")
    create.add_argument("--name", default="", help="a label, e.g. production")
    create.add_argument("--email", default="", help="log in with e-mail and password instead of a key")
    _password_and_save(create)
    keys.add_parser("list", help="list your keys")
    revoke = keys.add_parser("revoke", help="revoke a key at once")
    revoke.add_argument("id", help="the key's id from `cutout keys list`")
    revoke.add_argument("--password-stdin", action="store_true", help="read the password from standard input")

    commands.add_parser("models", help="the segmentation models the service runs: use, input size, licence, price")
    balance = commands.add_parser("balance", help="show your credits")
    balance.add_argument("--ledger", type=int, default=0, metavar="N", help="also show the last N ledger entries")
    results = commands.add_parser("results", help="results kept with --keep").add_subparsers(
        dest="results_command", required=True
    )
    results.add_parser("list", help="your kept results")
    fetch = results.add_parser("fetch", help="download a kept result")
    fetch.add_argument("id", nargs="?", default="", help="its id (as the owner)")
    fetch.add_argument("--token", default="", help="or its token (anyone holding it; no API key needed)")
    fetch.add_argument("-o", "--output", type=Path, required=True)
    delete = results.add_parser("delete", help="delete a kept result now")
    delete.add_argument("id")

    account = commands.add_parser("account", help="your data: see, export, correct, restrict, erase").add_subparsers(
        dest="account_command", required=True
    )
    account.add_parser("show", help="your profile and consents")
    export = account.add_parser("export", help="everything held about you, as a zip archive")
    export.add_argument("-o", "--output", type=Path, required=True, help="the archive to write, e.g. my-data.zip")
    export.add_argument("--no-results", action="store_true", help="leave the kept results out (their metadata stays)")
    account.add_parser("access-log", help="who accessed your data, when, and how")
    name = account.add_parser("name", help="correct your display name")
    name.add_argument("name")
    email = account.add_parser("email", help="correct your e-mail address (needs your password)")
    email.add_argument("new_email")
    email.add_argument("--code", default="", help="the code e-mailed to the new address (first run without it)")
    email.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    restrict = account.add_parser("restrict", help="keep the account but process no image of it (--off lifts it)")
    restrict.add_argument("--off", action="store_true")
    stats = account.add_parser("stats", help="object to (or allow) your use being counted in usage statistics")
    choice = stats.add_mutually_exclusive_group(required=True)
    choice.add_argument("--opt-out", action="store_true")
    choice.add_argument("--opt-in", action="store_true")
    erase_account = account.add_parser("delete", help="erase your account and everything kept for it (final)")
    erase_account.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    erase_account.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    admin = commands.add_parser(
        "admin", help="administration, inside the cell (CUTOUT_ADMIN_ENDPOINT, CUTOUT_ADMIN_TOKEN)"
    ).add_subparsers(dest="admin_command", required=True)
    lookup = admin.add_parser("lookup", help="an account by id or e-mail (written to its owner's access log)")
    lookup.add_argument("id", nargs="?", default="")
    lookup.add_argument("--email", default="")
    grant = admin.add_parser("grant", help="grant credits")
    grant.add_argument("id")
    grant.add_argument("amount", type=int)
    grant.add_argument("--source", default="admin", choices=["admin", "purchase"])
    admin_delete = admin.add_parser("delete", help="erase an account (e.g. a child's, at a guardian's request)")
    admin_delete.add_argument("id")
    admin_delete.add_argument("--reason", required=True, help="why; kept in the audit log (no personal data)")
    return parser


def _output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--format",
        choices=sorted(FORMATS),
        default="png",
        help="png/webp: transparent background; mask: the alpha matte; jpeg/png-on-color: subject on --background; "
        "auto: PNG if transparent, else JPEG; pair: colour JPEG + alpha PNG",
    )
    parser.add_argument("--background", default="", help="CSS colour for jpeg and png-on-color (default white)")
    parser.add_argument("--crop", action="store_true", help="crop to the subject")
    parser.add_argument("--keep", action="store_true", help="also keep the result, encrypted, to fetch later")
    parser.add_argument("--keep-hours", type=float, default=0, help="with --keep: expire sooner than 30 days")
    parser.add_argument("--margin", type=int, default=0, help="pixels kept around the subject with --crop")
    parser.add_argument("--max-width", type=int, default=0, help="scale down to at most this width")
    parser.add_argument("--max-height", type=int, default=0, help="scale down to at most this height")
    parser.add_argument("--quality", type=int, default=0, help="JPEG/WebP quality 1-100 (0: server default)")
    parser.add_argument("--effort", type=int, default=0, help="compression effort 1 (fast) to 9 (small); 0: default")
    subject = parser.add_mutually_exclusive_group()
    subject.add_argument(
        "--subject",
        choices=sorted(SUBJECTS),
        default="auto",
        help="auto: the level's model (at --detail fast, the person model for portraits); person: fastest; "
        "any: products, animals",
    )
    subject.add_argument("--model", default="", help="a model by name instead of --subject (e.g. u2netp)")
    parser.add_argument(
        "--detail",
        choices=list(DETAILS),
        help="the edges: fine (full U²-Net and matting, about 1.5 s of CPU), balanced, fast (tens of ms); "
        "default: the server's",
    )
    parser.add_argument("--zip", action="store_true", help="with --format pair: one .zip holding both files")
    parser.add_argument(
        "--size", choices=sorted(SIZES), default="full", help="preview (<= 0.25 MP, cheaper), full, or auto"
    )
    parser.add_argument("--background-image", type=Path, help="a picture to put behind the subject (opaque formats)")
    parser.add_argument("--fit", choices=sorted(FITS), default="", help="--background-image: cover (default) or fit")
    parser.add_argument("--blur-background", action="store_true", help="the photo itself, blurred, behind the subject")
    parser.add_argument("--scale", type=int, default=0, help="the subject fills this %% of the canvas (10-100)")
    parser.add_argument(
        "--position", default="", metavar="center|original|X,Y", help="where the subject goes (X,Y in percent)"
    )
    parser.add_argument("--roi", default="", metavar="LEFT,TOP,WIDTH,HEIGHT", help="only look inside this rectangle")
    parser.add_argument(
        "--canvas", default="", metavar="WxH", help="a fixed output size: the subject fitted inside the padding"
    )
    parser.add_argument(
        "--padding",
        default="",
        metavar="PX|TOP,RIGHT,BOTTOM,LEFT|N%",
        help="with --canvas: free space per side, in pixels, or N%% of the canvas",
    )
    parser.add_argument("--margin-percent", type=int, default=0, help="with --crop: margin in %% of the subject (<=50)")
    parser.add_argument("--shadow", action="store_true", help="a soft drop shadow under the subject")
    parser.add_argument("--clean-edges", action="store_true", help="remove the old background's colour from edges")


def _integers(text: str, count: int, flag: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        values = []
    if len(values) != count or min(values) < 0:
        raise SystemExit(f"cutout: {flag} takes {count} comma-separated whole numbers, got {text!r}")
    return values


def _box(text: str) -> erase_pb2.Box:
    try:
        return watermark.parse_box(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _erase_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--box", type=_box, action="append", default=[], metavar="X,Y,W,H", help="a rectangle to erase (repeatable)"
    )
    parser.add_argument("--method", choices=list(ERASE_METHODS), default="auto", help="the fill (default: auto)")
    parser.add_argument("--format", choices=list(ERASE_FORMATS), default="png", help="png and webp are lossless")
    parser.add_argument("--quality", type=int, default=0, help="JPEG quality 1-100 (0: server default)")


def _erase_regions_options(args: argparse.Namespace) -> erase_pb2.EraseOptions:
    return erase_pb2.EraseOptions(
        method=ERASE_METHODS[args.method], format=ERASE_FORMATS[args.format][0], quality=args.quality
    )


def _options(args: argparse.Namespace) -> options_pb2.RemoveBackgroundOptions:
    options = options_pb2.RemoveBackgroundOptions(
        format=FORMATS[args.format][0],
        background_color=args.background,
        crop_to_subject=args.crop,
        crop_margin_px=args.margin,
        crop_margin_percent=args.margin_percent,
        max_width=args.max_width,
        max_height=args.max_height,
        quality=args.quality,
        compression_effort=args.effort,
        keep_result=args.keep,
        subject=SUBJECTS[args.subject],
        model=args.model,
        size=SIZES[args.size],
        background_fit=FITS.get(args.fit, 0),
        blur_background=args.blur_background,
        scale=args.scale,
        add_shadow=args.shadow,
        clean_edges=args.clean_edges,
        detail=DETAILS[args.detail] if args.detail else options_pb2.DETAIL_UNSPECIFIED,
    )
    if args.background_image:
        options.background_image = args.background_image.read_bytes()
    if args.position in ("center", "original"):
        options.position = options_pb2.POSITION_CENTER if args.position == "center" else options_pb2.POSITION_ORIGINAL
    elif args.position:
        options.position = options_pb2.POSITION_PERCENT
        options.position_x_percent, options.position_y_percent = _integers(args.position, 2, "--position")
    if args.roi:
        left, top, width, height = _integers(args.roi, 4, "--roi")
        options.roi.CopyFrom(options_pb2.Rect(left=left, top=top, width=width, height=height))
    if args.canvas:
        _canvas(args.canvas, args.padding, options)
    elif args.padding:
        raise SystemExit("--padding needs --canvas")
    if args.keep_hours:
        options.keep_ttl.FromSeconds(round(args.keep_hours * 3600))
    return options


def _canvas(canvas: str, padding: str, options: options_pb2.RemoveBackgroundOptions) -> None:
    try:
        width, height = (int(side) for side in canvas.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--canvas {canvas!r}: give WIDTHxHEIGHT, e.g. 1000x1000") from None
    options.output_size.width, options.output_size.height = width, height
    if padding.endswith("%"):
        options.output_size.padding_percent = _integers(padding[:-1], 1, "--padding")[0]
    elif padding:
        sides = _integers(padding, 4, "--padding") if "," in padding else _integers(padding, 1, "--padding") * 4
        options.output_size.padding.CopyFrom(
            options_pb2.Margins(top=sides[0], right=sides[1], bottom=sides[2], left=sides[3])
        )


def output_extension(args: argparse.Namespace) -> str:
    """The main output file's extension before the answer is known (AUTO: PNG unless a background is asked for)."""
    if args.format == "pair" and args.zip:
        return ".zip"
    if args.format == "auto":
        opaque = args.background or args.background_image or args.blur_background
        return ".jpg" if opaque else ".png"
    return FORMATS[args.format][1]


def _password_and_save(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    parser.add_argument("--save", action="store_true", help=f"save the new key in {config_path()}")


def _password(args: argparse.Namespace, confirm: bool) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    password = getpass.getpass("password: ")
    if confirm and getpass.getpass("again: ") != password:
        raise SystemExit("cutout: the passwords differ")
    return password


def _yes(question: str, default: bool) -> bool:
    if not sys.stdin.isatty():
        return default
    answer = input(f"{question} [{'Y/n' if default else 'y/N'}] ").strip().lower()
    return default if not answer else answer.startswith("y")


def _when(stamp: timestamp_pb2.Timestamp, unset: str = "-") -> str:
    if not stamp.seconds and not stamp.nanos:
        return unset
    return stamp.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M UTC")


def _show_new_key(args: argparse.Namespace, api_key: str, key_id: str) -> None:
    print(f"API key (shown once; id {key_id}):\n  {api_key}")
    if args.save or _yes(f"save it in {config_path()}?", default=False):
        print(f"saved in {save_config(api_key=api_key)}")
    else:
        print("use it with: export CUTOUT_API_KEY=<the key>")


def signup(args: argparse.Namespace) -> int:
    if args.code:  # the second step: the code from the e-mail opens the account
        password = _password(args, confirm=False)
        with CutoutClient(args.gateway, ca_file=args.ca, plaintext=args.plaintext or None, api_key="") as client:
            verified = client.verify_sign_up(args.email, password, args.code, key_name="cli")
        granted = credits_text(verified.balance.available_decimal, verified.balance.available)
        print(f"account {verified.profile.account_id} ({verified.profile.region}): {granted} credits")
        _show_new_key(args, verified.api_key, verified.key.id)
        return 0
    if not args.confirm_age and not _yes("are you at least 13 years old?", default=False):
        print("cutout: you must be at least 13 years old to sign up (--confirm-age)", file=sys.stderr)
        return 1
    password = _password(args, confirm=True)
    with CutoutClient(args.gateway, ca_file=args.ca, plaintext=args.plaintext or None, api_key="") as client:
        answer = client.sign_up(
            args.email,
            password,
            display_name=args.name,
            region=args.region,
            age_confirmed=True,
            marketing_opt_in=args.marketing,
        )
    print(f"check {args.email} for a code, then: cutout signup --email {args.email} --code CODE")
    free = answer.free_credits_decimal or str(answer.free_credits)  # an older server sends whole credits only
    print(f"(the account gets {free} free credits once verified)")
    if answer.free_credits_note:
        print(answer.free_credits_note)
    return 0


def keys(args: argparse.Namespace) -> int:
    with CutoutClient(args.gateway, ca_file=args.ca, plaintext=args.plaintext or None) as client:
        if args.keys_command == "create":
            if args.email:
                created = client.create_api_key(args.name, email=args.email, password=_password(args, confirm=False))
            else:  # a key alone cannot make keys: the password too
                created = client.create_api_key(args.name, password=_password(args, confirm=False))
            _show_new_key(args, created.api_key, created.key.id)
        elif args.keys_command == "list":
            print(f"{'id':36}  {'prefix':12}  {'name':16}  {'created':20}  {'last used':20}  revoked")
            for key in client.iter_api_keys():  # every page
                print(
                    f"{key.id:36}  {key.prefix + '…':12}  {key.name:16}  {_when(key.created_at):20}  "
                    f"{_when(key.last_used_at, 'never'):20}  {_when(key.revoked_at, 'no')}"
                )
        else:
            revoked = client.revoke_api_key(args.id, password=_password(args, confirm=False))
            print(f"revoked {revoked.key.id} ({revoked.key.prefix}…) at {_when(revoked.key.revoked_at)}")
    return 0


def models(args: argparse.Namespace) -> int:
    with CutoutClient(args.gateway, ca_file=args.ca, plaintext=args.plaintext or None) as client:
        listed = client.list_models().models
    print(f"{'model':24} {'served':6} {'input':9} {'licence':12} {'credits':7} {'default for':11} purpose")
    for model in listed:
        default = options_pb2.Subject.Name(model.default_for).removeprefix("SUBJECT_").lower()
        size = f"{model.input_width}x{model.input_height}" if model.input_width else "-"
        print(
            f"{model.name:24} {'yes' if model.served else 'no':6} {size:9} {model.license or '-':12} "
            f"{model.price_decimal or '-':7} {default if model.default_for else '-':11} {model.purpose}"
        )
    return 0


def balance(args: argparse.Namespace) -> int:
    with CutoutClient(args.gateway, ca_file=args.ca, plaintext=args.plaintext or None) as client:
        shown = client.balance()
        available = credits_text(shown.available_decimal, shown.available)
        line = f"{available} credits available, {credits_text(shown.held_decimal, shown.held)} held"
        if shown.HasField("next_expiry"):
            expiring = credits_text(shown.expiring_next_decimal, shown.expiring_next)
            line += f"; {expiring} expire {_when(shown.next_expiry)}"
        print(line)
        if args.ledger:
            for entry in client.ledger(args.ledger).entries:
                amount = signed(credits_text(entry.amount_decimal, entry.amount))
                held = signed(credits_text(entry.held_decimal, entry.held))
                print(
                    f"{_when(entry.created_at)}  {entry.kind:8} {amount:>9} available {held:>9} held"
                    f"  {entry.idempotency_key}"
                )
    return 0


def remove(args: argparse.Namespace) -> int:
    options = _options(args)
    with CutoutClient(args.gateway, ca_file=args.ca, plaintext=args.plaintext or None) as client:
        response = client.remove_background(args.input.read_bytes(), options, timeout_s=args.timeout)
    result, timings = response.result, response.timings
    extension = output_extension(args)
    if args.format == "auto":
        extension = EXTENSIONS.get(result.media_type, extension)
    output = args.output or args.input.with_name(f"{args.input.stem}-cutout{extension}")
    for path, data in batches.result_files(output, result):
        path.write_bytes(data)
    box = result.foreground_box
    print(
        f"{output}: {result.width}x{result.height} {result.media_type}"
        f"{' + alpha PNG' if result.alpha_image else ''} ({options_pb2.Size.Name(result.size)[5:].lower()}), "
        f"{result.foreground_fraction:.0%} kept by {result.model}, {timings.total_ms:.0f} ms"
    )
    subject = f"subject at {box.left},{box.top} {box.width}x{box.height}" if result.HasField("foreground_box") else ""
    replay = " (a replay of an earlier call)" if response.idempotent_replay else ""
    charged = credits_text(response.credits_charged_decimal, response.credits_charged)
    print(f"{subject}{'; ' if subject else ''}{charged} credits charged{replay}")
    if response.HasField("kept"):
        kept = response.kept
        print(f"kept as {kept.result_id} until {_when(kept.expires_at)}; token (shown once): {kept.token}")
    return 0


def erase(args: argparse.Namespace) -> int:
    if not args.mask and not args.box:
        print("cutout: say what to erase with --mask and/or --box", file=sys.stderr)
        return 2
    regions = erase_pb2.EraseRegions(
        mask=args.mask.read_bytes() if args.mask else b"", boxes=args.box, options=_erase_regions_options(args)
    )
    output = args.output or args.input.with_name(f"{args.input.stem}-erased{ERASE_FORMATS[args.format][1]}")
    with CutoutClient(args.gateway, ca_file=args.ca, plaintext=args.plaintext or None) as client:
        response = client.erase_regions(args.input.read_bytes(), regions, timeout_s=args.timeout)
    output.write_bytes(response.result.image)
    result = response.result
    fills = ", ".join(
        f"{erase_pb2.EraseMethod.Name(r.method).removeprefix('ERASE_METHOD_').lower()} {r.pixels} px"
        for r in response.regions
    )
    print(
        f"{output}: {result.width}x{result.height} {result.media_type}, {result.foreground_fraction:.1%} erased "
        f"in {len(response.regions)} regions ({fills}), {response.timings.total_ms:.0f} ms"
    )
    return 0


def erase_batch(args: argparse.Namespace) -> int:
    """Exit status as `batch`."""
    if args.concurrency < 1:
        print("cutout: --concurrency must be at least 1", file=sys.stderr)
        return 2
    try:
        if args.mask:
            make_mask = watermark.TemplateMask.load(args.mask.read_bytes())
        elif args.color:
            make_mask = watermark.ColourMask.parse(args.color, args.tolerance, args.within, args.grow)
        elif args.box:
            make_mask = None
        else:
            print("cutout: say what to erase with --mask, --color or --box", file=sys.stderr)
            return 2
    except ValueError as error:
        print(f"cutout: {error}", file=sys.stderr)
        return 2
    rule = batches.EraseRule(make_mask, args.box, _erase_regions_options(args))
    inputs = batches.find_inputs(args.input, args.output)
    if not inputs:
        print(f"cutout: no JPEG, PNG or WebP images in {args.input}", file=sys.stderr)
        return 2
    try:
        pending, existing = batches.plan(inputs, args.output, ERASE_FORMATS[args.format][1])
    except ValueError as error:
        print(f"cutout: {error}; rename one of them", file=sys.stderr)
        return 2
    started = time.perf_counter()
    with CutoutClient(args.gateway, ca_file=args.ca, plaintext=args.plaintext or None) as client:
        outcome = batches.run_batch(
            client,
            pending,
            args.output,
            options_pb2.RemoveBackgroundOptions(),
            concurrency=args.concurrency,
            progress=not args.no_progress,
            erase=rule,
        )
    outcome.skipped = len(existing)
    print(batches.report(outcome, len(pending), time.perf_counter() - started))
    if outcome.interrupted:
        return 130
    return 1 if outcome.failures else 0


def batch(args: argparse.Namespace) -> int:
    """Exit status 0 if every image has its output, 1 if any failed, 130 if interrupted."""
    if args.concurrency < 1:
        print("cutout: --concurrency must be at least 1", file=sys.stderr)
        return 2
    inputs = batches.find_inputs(args.input, args.output)
    if not inputs:
        print(f"cutout: no JPEG, PNG or WebP images in {args.input}", file=sys.stderr)
        return 2
    try:
        pending, existing = batches.plan(inputs, args.output, output_extension(args))
    except ValueError as error:
        print(f"cutout: {error}; rename one of them", file=sys.stderr)
        return 2
    started = time.perf_counter()
    with CutoutClient(args.gateway, ca_file=args.ca, plaintext=args.plaintext or None) as client:
        outcome = batches.run_batch(
            client, pending, args.output, _options(args), concurrency=args.concurrency, progress=not args.no_progress
        )
    outcome.skipped = len(existing)
    print(batches.report(outcome, len(pending), time.perf_counter() - started))
    if outcome.interrupted:
        return 130
    return 1 if outcome.failures else 0


def results(args: argparse.Namespace) -> int:
    with CutoutClient(args.gateway, ca_file=args.ca, plaintext=args.plaintext or None) as client:
        if args.results_command == "list":
            for kept in client.iter_results():  # every page
                size = f"{kept.width}x{kept.height}"
                print(f"{kept.result_id}  {kept.media_type:10} {size:>11}  expires {_when(kept.expires_at)}")
        elif args.results_command == "fetch":
            if not (args.id or args.token):
                print("cutout: give the result's id or --token", file=sys.stderr)
                return 2
            kept, data = client.fetch_result(token=args.token, result_id=args.id)
            args.output.write_bytes(data)
            print(f"{args.output}: {kept.width}x{kept.height} {kept.media_type}, expires {_when(kept.expires_at)}")
        else:
            client.delete_result(args.id)
            print(f"deleted {args.id}")
    return 0


def account(args: argparse.Namespace) -> int:
    with CutoutClient(args.gateway, ca_file=args.ca, plaintext=args.plaintext or None) as client:
        command = args.account_command
        if command == "export":
            with args.output.open("wb") as out:
                size = client.export_account(out, include_results=not args.no_results)
            print(f"{args.output}: {size} bytes (zip: profile, keys, ledger, kept results, access log)")
            return 0
        if command == "access-log":
            for entry in client.iter_access_log():  # every page
                print(f"{_when(entry.at)}  {entry.service:9}  {entry.actor:16}  {entry.action:14}  {entry.result_id}")
            return 0
        if command == "delete":
            if not args.yes and not _yes("erase your account and everything kept for it? this cannot be undone", False):
                print("cutout: not erased (--yes to skip this question)", file=sys.stderr)
                return 1
            erased = client.delete_account(_password(args, confirm=False))
            print(
                f"erasure {erased.erasure_id}: {erased.state}"
                + (" (it finishes by itself)" if erased.state == "pending" else "")
            )
            return 0
        if command == "email":
            profile = client.change_email(args.new_email, _password(args, confirm=False), args.code)
            if profile.email_verification_required:
                print(f"a code went to {args.new_email}: run this again with --code CODE to finish")
                return 0
        elif command == "name":
            profile = client.update_profile(display_name=args.name)
        elif command == "restrict":
            profile = client.update_profile(processing_restricted=not args.off)
        elif command == "stats":
            profile = client.update_profile(usage_stats_opt_out=args.opt_out)
        else:
            profile = client.profile()
        print(
            f"account {profile.account_id} ({profile.region}, {profile.plan}): {profile.email}, "
            f"name {profile.display_name!r}\n  marketing e-mails {'on' if profile.marketing_opt_in else 'off'}; "
            f"usage statistics {'objected to' if profile.usage_stats_opt_out else 'counted'}; "
            f"processing {'restricted' if profile.processing_restricted else 'allowed'}"
        )
    return 0


def admin(args: argparse.Namespace) -> int:
    endpoint = os.environ.get("CUTOUT_ADMIN_ENDPOINT", "")
    token = os.environ.get("CUTOUT_ADMIN_TOKEN", "")
    if not endpoint or not token:
        print("cutout: set CUTOUT_ADMIN_ENDPOINT (the admin listener) and CUTOUT_ADMIN_TOKEN (yours)", file=sys.stderr)
        return 2
    ca_file = args.ca or os.environ.get("CUTOUT_CA_FILE") or None
    metadata = [(ADMIN_TOKEN_METADATA, token)]
    with open_channel(endpoint, ca_file, plaintext=bool(args.plaintext)) as channel:
        stub = cutout_pb2_grpc.AdminStub(channel)
        if args.admin_command == "lookup":
            found = stub.LookupAccount(
                account_pb2.LookupAccountRequest(account_id=args.id, email=args.email), metadata=metadata, timeout=30
            )
            print(
                f"account {found.profile.account_id} ({found.profile.region}, {found.profile.plan}): "
                f"{found.balance.available} credits, {found.active_api_keys} active keys"
            )
        elif args.admin_command == "grant":
            granted = stub.GrantCredits(
                account_pb2.GrantCreditsRequest(account_id=args.id, amount=args.amount, source=args.source),
                metadata=metadata,
                timeout=30,
            )
            print(f"grant {granted.grant_id}: {granted.balance.available} credits available")
        else:
            erased = stub.DeleteAccount(
                rights_pb2.AdminDeleteAccountRequest(account_id=args.id, reason=args.reason),
                metadata=metadata,
                timeout=120,
            )
            print(f"erasure {erased.erasure_id}: {erased.state}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "remove":
            return remove(args)
        if args.command == "batch":
            return batch(args)
        if args.command == "erase":
            return erase(args)
        if args.command == "erase-batch":
            return erase_batch(args)
        if args.command == "signup":
            return signup(args)
        if args.command == "keys":
            return keys(args)
        if args.command == "balance":
            return balance(args)
        if args.command == "models":
            return models(args)
        if args.command == "results":
            return results(args)
        if args.command == "account":
            return account(args)
        if args.command == "admin":
            return admin(args)
    except grpc.RpcError as error:
        print(f"cutout: {error.code().name}: {error.details()}", file=sys.stderr)  # type: ignore[attr-defined]
        return 1
    except (OSError, ValueError) as error:
        print(f"cutout: {error}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
