"""`cutout remove` against the running mesh."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import decode

CUTOUT = Path(sys.executable).parent / "cutout"


def run_cli(mesh, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CUTOUT_GATEWAY": mesh.gateway.address}
    return subprocess.run([str(CUTOUT), *args], env=env, capture_output=True, text=True, timeout=120)


def test_remove_writes_the_cutout_with_the_chosen_options(mesh, tmp_path, astronaut_png):
    photo = tmp_path / "astronaut.png"
    photo.write_bytes(astronaut_png)
    done = run_cli(
        mesh,
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


def test_remove_with_the_default_output_name(mesh, tmp_path, astronaut_png):
    photo = tmp_path / "me.png"
    photo.write_bytes(astronaut_png)
    assert run_cli(mesh, "remove", str(photo)).returncode == 0
    assert decode((tmp_path / "me-cutout.png").read_bytes()).mode == "RGBA"


def test_errors_are_reported_with_the_status_and_exit_1(mesh, tmp_path):
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("hello")
    done = run_cli(mesh, "remove", str(not_an_image), "-o", str(tmp_path / "x.png"))
    assert done.returncode == 1
    assert "INVALID_ARGUMENT" in done.stderr and "not a JPEG, PNG or WebP" in done.stderr
    assert not (tmp_path / "x.png").exists()
    missing = run_cli(mesh, "remove", str(tmp_path / "missing.jpg"))
    assert missing.returncode == 1 and "missing.jpg" in missing.stderr
