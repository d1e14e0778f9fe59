"""`cutout remove` against the running mesh (the key from CUTOUT_API_KEY)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import decode, encode, sign_up_code

CUTOUT = Path(sys.executable).parent / "cutout"


def run_cli(mesh, *args: str, api_key: str = "", config: Path | None = None, stdin: str = ""):
    env = {
        **os.environ,
        "CUTOUT_GATEWAY": mesh.gateway.address,
        "CUTOUT_CA_FILE": str(mesh.ca_file),
        "CUTOUT_API_KEY": api_key,
    }
    env["CUTOUT_CONFIG"] = str(config or Path(os.devnull))
    return subprocess.run([str(CUTOUT), *args], env=env, capture_output=True, text=True, timeout=120, input=stdin)


@pytest.fixture
def cli(mesh, funded_account):
    return lambda *args: run_cli(mesh, *args, api_key=funded_account.api_key)


def test_remove_writes_the_cutout_with_the_chosen_options(cli, tmp_path, astronaut_png):
    photo = tmp_path / "astronaut.png"
    photo.write_bytes(astronaut_png)
    done = cli(
        "remove",
        str(photo),
        "-o",
        str(tmp_path / "out.jpg"),
        "--format",
        "jpeg",
        "--background",
        "#1e90ff",
        "--crop",
        "--margin",
        "8",
        "--max-width",
        "300",
    )
    assert done.returncode == 0, done.stderr
    out = decode((tmp_path / "out.jpg").read_bytes())
    assert out.format == "JPEG" and out.width <= 300
    assert "kept" in done.stdout


def test_remove_with_the_default_output_name(cli, tmp_path, astronaut_png):
    photo = tmp_path / "me.png"
    photo.write_bytes(astronaut_png)
    assert cli("remove", str(photo)).returncode == 0
    assert decode((tmp_path / "me-cutout.png").read_bytes()).mode == "RGBA"


def test_errors_are_reported_with_the_status_and_exit_1(cli, tmp_path):
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("hello")
    done = cli("remove", str(not_an_image), "-o", str(tmp_path / "x.png"))
    assert done.returncode == 1
    assert "INVALID_ARGUMENT" in done.stderr and "not a JPEG, PNG or WebP" in done.stderr
    assert not (tmp_path / "x.png").exists()
    missing = cli("remove", str(tmp_path / "missing.jpg"))
    assert missing.returncode == 1 and "missing.jpg" in missing.stderr


def test_signup_save_balance_keys_and_remove_with_the_key_from_the_config_file(mesh, tmp_path, astronaut_png):
    config = tmp_path / "config.toml"
    email, password = "cli-user@example.com", "a long enough password"

    def cutout(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return run_cli(mesh, *args, config=config, stdin=stdin)

    refused = cutout("signup", "--email", email, "--password-stdin", stdin=password + "\n")
    assert refused.returncode == 1 and "13" in refused.stderr
    asked = cutout("signup", "--email", email, "--confirm-age", "--password-stdin", stdin=password + "\n")
    assert asked.returncode == 0, asked.stderr
    assert f"check {email} for a code" in asked.stdout and "--code" in asked.stdout
    code = sign_up_code(email)
    done = cutout("signup", "--email", email, "--code", code, "--password-stdin", "--save", stdin=password + "\n")
    assert done.returncode == 0, done.stderr
    assert "credits" in done.stdout and str(config) in done.stdout
    assert config.stat().st_mode & 0o077 == 0, "the config file holds a key: owner only"
    first_key = config.read_text().split('"')[1]
    assert first_key.startswith("ck_") and first_key in done.stdout

    balance = cutout("balance")
    assert balance.returncode == 0 and "credits available" in balance.stdout
    photo = tmp_path / "me.png"
    photo.write_bytes(astronaut_png)
    assert cutout("remove", str(photo)).returncode == 0
    ledger = cutout("balance", "--ledger", "5")
    assert "commit" in ledger.stdout and "reserve" in ledger.stdout

    second = cutout("keys", "create", "--name", "ci", "--password-stdin", stdin=password + "\n")
    assert second.returncode == 0 and "API key" in second.stdout
    listed = cutout("keys", "list")
    assert listed.returncode == 0 and "ci" in listed.stdout and "cli" in listed.stdout  # "cli": the first key
    first_id = next(line.split()[0] for line in listed.stdout.splitlines() if first_key[:11] in line)
    revoked = cutout("keys", "revoke", first_id, "--password-stdin", stdin=password + "\n")
    assert revoked.returncode == 0, revoked.stderr
    after = cutout("balance")
    assert after.returncode == 1 and "UNAUTHENTICATED" in after.stderr and "revoked" in after.stderr

    # Logging in again with e-mail and password.
    again = cutout("keys", "create", "--email", email, "--password-stdin", "--save", stdin=password + "\n")
    assert again.returncode == 0, again.stderr
    assert cutout("balance").returncode == 0


def test_keep_then_list_fetch_by_id_and_by_token_then_delete(mesh, funded_account, tmp_path, astronaut_png):
    photo = tmp_path / "me.png"
    photo.write_bytes(astronaut_png)

    def cli(*args: str, key: str = funded_account.api_key) -> subprocess.CompletedProcess[str]:
        return run_cli(mesh, *args, api_key=key)

    kept = cli("remove", str(photo), "-o", str(tmp_path / "out.png"), "--keep", "--keep-hours", "2")
    assert kept.returncode == 0, kept.stderr
    words = kept.stdout.split()
    result_id, token = words[words.index("as") + 1], words[-1]
    assert result_id in cli("results", "list").stdout
    assert cli("results", "fetch", result_id, "-o", str(tmp_path / "by-id.png")).returncode == 0
    by_token = cli("results", "fetch", "--token", token, "-o", str(tmp_path / "by-token.png"), key="")
    assert by_token.returncode == 0, by_token.stderr
    original = (tmp_path / "out.png").read_bytes()
    assert (tmp_path / "by-id.png").read_bytes() == original == (tmp_path / "by-token.png").read_bytes()
    assert cli("results", "delete", result_id).returncode == 0
    gone = cli("results", "fetch", "--token", token, "-o", str(tmp_path / "x.png"), key="")
    assert gone.returncode == 1 and "NOT_FOUND" in gone.stderr


def test_remove_writes_the_colour_alpha_pair_as_two_files_or_a_zip(cli, tmp_path, astronaut_png):
    photo = tmp_path / "astronaut.png"
    photo.write_bytes(astronaut_png)
    done = cli("remove", str(photo), "-o", str(tmp_path / "pair.jpg"), "--format", "pair")
    assert done.returncode == 0, done.stderr
    colour, alpha = decode((tmp_path / "pair.jpg").read_bytes()), decode((tmp_path / "pair-alpha.png").read_bytes())
    assert (colour.format, colour.mode, alpha.format, alpha.mode) == ("JPEG", "RGB", "PNG", "L")
    assert colour.size == alpha.size == (512, 512)
    assert "1 credits charged" in done.stdout and "subject at" in done.stdout

    done = cli("remove", str(photo), "-o", str(tmp_path / "pair.zip"), "--format", "pair", "--zip")
    assert done.returncode == 0, done.stderr
    with zipfile.ZipFile(tmp_path / "pair.zip") as archive:
        assert sorted(archive.namelist()) == ["pair-alpha.png", "pair.jpg"]
        assert archive.read("pair-alpha.png") == (tmp_path / "pair-alpha.png").read_bytes()


def test_remove_with_the_placement_background_and_size_flags(cli, tmp_path, astronaut_png):
    photo, backdrop = tmp_path / "me.png", tmp_path / "beach.png"
    photo.write_bytes(astronaut_png)
    backdrop.write_bytes(encode(Image.new("RGB", (64, 64), (250, 200, 10)), "PNG"))
    done = cli(
        "remove",
        str(photo),
        "--format",
        "auto",
        "--size",
        "preview",
        "--background-image",
        str(backdrop),
        "--scale",
        "60",
        "--position",
        "50,100",
        "--shadow",
        "--clean-edges",
    )
    assert done.returncode == 0, done.stderr
    out = decode((tmp_path / "me-cutout.jpg").read_bytes())
    assert out.format == "JPEG" and out.width * out.height <= 250_000
    assert "(preview)" in done.stdout
    assert np.abs(np.asarray(out, np.int16)[5, 5] - (250, 200, 10)).max() < 12, "the background image behind"
    refused = cli("remove", str(photo), "--roi", "1,2,3")
    assert refused.returncode != 0 and "--roi takes 4" in refused.stderr
