"""`cutout batch`: planning unit tests, then real batches through the running mesh."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cutout import batch
from tests.conftest import decode, new_account, photo_variants
from tests.mesh.test_cli import run_cli
from tests.mesh.test_credits import balance


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_inputs_keep_their_relative_paths_and_the_output_folder_is_left_out(tmp_path):
    shop = tmp_path / "shop"
    for name in ["a.jpg", "shoes/b.PNG", "shoes/c.webp", "notes.txt", ".hidden/d.jpg", "cutouts/a.png"]:
        touch(shop / name)
    found = batch.find_inputs(str(shop), shop / "cutouts")
    assert [str(relative) for _, relative in found] == ["a.jpg", "shoes/b.PNG", "shoes/c.webp"]

    globbed = batch.find_inputs(str(shop / "**" / "*.webp"), tmp_path / "out")
    assert [(str(relative)) for _, relative in globbed] == ["shoes/c.webp"]
    single = batch.find_inputs(str(shop / "a.jpg"), tmp_path / "out")
    assert [str(relative) for _, relative in single] == ["a.jpg"]


def test_a_plan_skips_existing_outputs_and_refuses_two_inputs_for_one_output(tmp_path):
    shop, out = tmp_path / "shop", tmp_path / "out"
    touch(shop / "a.jpg"), touch(shop / "shoes" / "b.jpg"), touch(out / "a.webp")
    pending, existing = batch.plan(batch.find_inputs(str(shop), out), out, ".webp")
    assert [job.output for job in pending] == [out / "shoes" / "b.webp"]
    assert [job.output for job in existing] == [out / "a.webp"]

    touch(shop / "a.png")
    with pytest.raises(ValueError, match="would both be written to"):
        batch.plan(batch.find_inputs(str(shop), out), out, ".webp")


def test_the_batch_id_is_made_once_per_output_folder_and_keys_differ_by_image_and_options(tmp_path):
    first = batch.batch_id(tmp_path / "out")
    assert batch.batch_id(tmp_path / "out") == first != batch.batch_id(tmp_path / "other")
    png, webp = batch.options_pb2.RemoveBackgroundOptions(), batch.options_pb2.RemoveBackgroundOptions(format=2)
    keys = {batch.idempotency_key(first, image, options) for image in (b"a", b"b") for options in (png, webp)}
    assert len(keys) == 4 and all(len(key) <= 200 for key in keys)


def test_batch_of_50_photos_writes_50_cutouts_and_a_rerun_skips_them_all(mesh, raw_channel, astronaut, tmp_path):
    account = new_account(raw_channel, mesh.admin_token, credits=60)
    photos, out = tmp_path / "photos", tmp_path / "cutouts"
    extension = {b"\xff\xd8": ".jpg", b"\x89P": ".png", b"RI": ".webp"}
    for n, photo in enumerate(photo_variants(astronaut, 50, seed=11)):
        touch(photos / f"aisle-{n % 3}" / f"item-{n:02}{extension[photo[:2]]}", photo)

    done = run_cli(mesh, "batch", str(photos), "-o", str(out), "--format", "webp", api_key=account.api_key)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "50 done, 0 failed, 0 skipped" in done.stdout and "50 credits charged" in done.stdout
    assert "50/50" in done.stderr  # the progress bar
    outputs = sorted(out.rglob("*.webp"))
    assert [path.relative_to(out).with_suffix("") for path in outputs] == sorted(
        path.relative_to(photos).with_suffix("") for path in photos.rglob("item-*")
    )
    assert all(decode(path.read_bytes()).mode == "RGBA" for path in outputs)
    assert not list(out.rglob("*.part"))
    assert balance(raw_channel, account).available == 10

    again = run_cli(mesh, "batch", str(photos), "-o", str(out), "--format", "webp", api_key=account.api_key)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "0 done, 0 failed, 50 skipped" in again.stdout
    assert balance(raw_channel, account).available == 10

    # Outputs lost after they were charged (a crash before the write) are made again and not
    # charged again: their keys were served, so the rerun's items are free replays (issue 28).
    lost = {path: path.read_bytes() for path in outputs[:3]}
    for path in lost:
        path.unlink()
    resumed = run_cli(mesh, "batch", str(photos), "-o", str(out), "--format", "webp", api_key=account.api_key)
    assert resumed.returncode == 0 and "3 done, 0 failed, 47 skipped" in resumed.stdout, resumed.stdout
    assert "0 credits charged" in resumed.stdout and balance(raw_channel, account).available == 10
    assert {path: path.read_bytes() for path in lost} == lost, "the same pictures, byte for byte"


def test_batch_lists_failed_items_exits_1_and_records_kept_results(mesh, raw_channel, astronaut, tmp_path):
    account = new_account(raw_channel, mesh.admin_token, credits=10)
    photos, out = tmp_path / "photos", tmp_path / "out"
    for n, photo in enumerate(photo_variants(astronaut, 3, seed=3)):
        touch(photos / f"good-{n}.jpg", photo)
    touch(photos / "corrupt.jpg", b"\xff\xd8\xff\xe0 this is not a JPEG")
    touch(photos / "empty.png", b"")

    done = run_cli(
        mesh, "batch", str(photos / "*.*"), "-o", str(out), "--keep", "--no-progress", api_key=account.api_key
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "3 done, 2 failed" in done.stdout and "3 credits charged" in done.stdout
    failed = [line for line in done.stdout.splitlines() if line.startswith("  ")]
    assert len(failed) == 2 and all("INVALID_ARGUMENT" in line for line in failed)
    assert "corrupt.jpg" in failed[0] and "empty.png" in failed[1]
    assert sorted(path.name for path in out.glob("*.png")) == ["good-0.png", "good-1.png", "good-2.png"]
    assert balance(raw_channel, account).available == 7

    manifest = out / batch.KEPT_FILE
    assert stat.S_IMODE(os.stat(manifest).st_mode) == 0o600  # it holds the tokens
    header, *rows = manifest.read_text().splitlines()
    assert header.split("\t") == ["input", "result_id", "expires_at", "token"] and len(rows) == 3
    assert all(row.split("\t")[3].startswith("crt_") for row in rows)


def test_batch_with_an_unknown_key_reports_every_item_unprocessed(mesh, tmp_path, astronaut):
    touch(tmp_path / "photos" / "a.jpg", photo_variants(astronaut, 1)[0])
    done = run_cli(mesh, "batch", str(tmp_path / "photos"), "-o", str(tmp_path / "out"), api_key="ck_not-a-key")
    assert done.returncode == 1
    assert "not processed (UNAUTHENTICATED" in done.stdout and not list((tmp_path / "out").glob("*.png"))


def test_batch_writes_colour_alpha_pairs_and_a_rerun_skips_them(mesh, raw_channel, astronaut, tmp_path):
    account = new_account(raw_channel, mesh.admin_token, credits=10)
    photos, out = tmp_path / "photos", tmp_path / "out"
    for n, photo in enumerate(photo_variants(astronaut, 3, seed=21)):
        touch(photos / f"p{n}.jpg", photo)
    done = run_cli(mesh, "batch", str(photos), "-o", str(out), "--format", "pair", api_key=account.api_key)
    assert done.returncode == 0, done.stderr
    for n in range(3):
        colour, alpha = decode((out / f"p{n}.jpg").read_bytes()), decode((out / f"p{n}-alpha.png").read_bytes())
        assert (colour.format, alpha.mode, colour.size) == ("JPEG", "L", alpha.size)
    again = run_cli(mesh, "batch", str(photos), "-o", str(out), "--format", "pair", api_key=account.api_key)
    assert again.returncode == 0, again.stderr
    assert balance(raw_channel, account).available == 7, "3 charged once, the rerun skipped them all"
