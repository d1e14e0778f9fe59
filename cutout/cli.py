"""The `cutout` command line.

cutout signup --email me@example.com [--region eu] [--save]   # account + first API key
cutout keys create|list|revoke ID
cutout balance [--ledger 20]
cutout remove photo.jpg -o photo.png [--format webp] [--background '#1e90ff'] [--crop --margin 24] [--keep]
cutout batch photos/ -o cutouts/ [--concurrency 16] [same options as remove]   # resumable
cutout results list|fetch (ID | --token TOKEN) -o FILE|delete ID

The API key comes from CUTOUT_API_KEY or the config file (~/.config/cutout/config.toml).
"""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from datetime import UTC
from pathlib import Path

import grpc
from google.protobuf import timestamp_pb2

from cutout import batch as batches
from cutout.client import DEFAULT_GATEWAY, CutoutClient, config_path, save_config
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

    signup = commands.add_parser("signup", help="create an account and its first API key")
    signup.add_argument("--email", required=True)
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
    return parser


def _output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--format",
        choices=sorted(FORMATS),
        default="png",
        help="png/webp: transparent background; mask: the alpha matte; jpeg/png-on-color: subject on --background",
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


def _options(args: argparse.Namespace) -> options_pb2.RemoveBackgroundOptions:
    options = options_pb2.RemoveBackgroundOptions(
        format=FORMATS[args.format][0],
        background_color=args.background,
        crop_to_subject=args.crop,
        crop_margin_px=args.margin,
        max_width=args.max_width,
        max_height=args.max_height,
        quality=args.quality,
        compression_effort=args.effort,
        keep_result=args.keep,
    )
    if args.keep_hours:
        options.keep_ttl.FromSeconds(round(args.keep_hours * 3600))
    return options


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
    if not args.confirm_age and not _yes("are you at least 13 years old?", default=False):
        print("cutout: you must be at least 13 years old to sign up (--confirm-age)", file=sys.stderr)
        return 1
    password = _password(args, confirm=True)
    with CutoutClient(args.gateway, ca_file=args.ca, plaintext=args.plaintext or None, api_key="") as client:
        created = client.sign_up(
            args.email,
            password,
            display_name=args.name,
            region=args.region,
            age_confirmed=True,
            marketing_opt_in=args.marketing,
        )
        print(f"account {created.profile.account_id} ({created.profile.region}): {created.balance.available} credits")
        key = client.create_api_key("cli", email=args.email, password=password)
    _show_new_key(args, key.api_key, key.key.id)
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
            for key in client.list_api_keys().keys:
                print(
                    f"{key.id:36}  {key.prefix + '…':12}  {key.name:16}  {_when(key.created_at):20}  "
                    f"{_when(key.last_used_at, 'never'):20}  {_when(key.revoked_at, 'no')}"
                )
        else:
            revoked = client.revoke_api_key(args.id, password=_password(args, confirm=False))
            print(f"revoked {revoked.key.id} ({revoked.key.prefix}…) at {_when(revoked.key.revoked_at)}")
    return 0


def balance(args: argparse.Namespace) -> int:
    with CutoutClient(args.gateway, ca_file=args.ca, plaintext=args.plaintext or None) as client:
        shown = client.balance()
        line = f"{shown.available} credits available, {shown.held} held"
        if shown.expiring_next:
            line += f"; {shown.expiring_next} expire {_when(shown.next_expiry)}"
        print(line)
        if args.ledger:
            for entry in client.ledger(args.ledger).entries:
                print(
                    f"{_when(entry.created_at)}  {entry.kind:8} {entry.amount:+6d} available {entry.held:+6d} held"
                    f"  {entry.idempotency_key}"
                )
    return 0


def remove(args: argparse.Namespace) -> int:
    extension = FORMATS[args.format][1]
    output = args.output or args.input.with_name(f"{args.input.stem}-cutout{extension}")
    with CutoutClient(args.gateway, ca_file=args.ca, plaintext=args.plaintext or None) as client:
        response = client.remove_background(args.input.read_bytes(), _options(args), timeout_s=args.timeout)
    output.write_bytes(response.result.image)
    result, timings = response.result, response.timings
    print(
        f"{output}: {result.width}x{result.height} {result.media_type}, "
        f"{result.foreground_fraction:.0%} kept, {timings.total_ms:.0f} ms"
    )
    if response.HasField("kept"):
        kept = response.kept
        print(f"kept as {kept.result_id} until {_when(kept.expires_at)}; token (shown once): {kept.token}")
    return 0


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
        pending, existing = batches.plan(inputs, args.output, FORMATS[args.format][1])
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
            for kept in client.list_results().results:
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "remove":
            return remove(args)
        if args.command == "batch":
            return batch(args)
        if args.command == "signup":
            return signup(args)
        if args.command == "keys":
            return keys(args)
        if args.command == "balance":
            return balance(args)
        if args.command == "results":
            return results(args)
    except grpc.RpcError as error:
        print(f"cutout: {error.code().name}: {error.details()}", file=sys.stderr)  # type: ignore[attr-defined]
        return 1
    except (OSError, ValueError) as error:
        print(f"cutout: {error}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
