"""Packages per role and locked versions.

The client package (`pip install cutout`: contract, client, command line) brings no
server dependency; the services are the `server` extra. CI, the images and Kubernetes
install the same pinned versions (requirements/*.lock).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOCKS = ROOT / "requirements"
# What only the services need; none of it may reach a client's machine.
SERVER_ONLY = {"nvidia-pytriton", "ai-edge-litert", "sqlmodel", "tritonclient", "onnxruntime", "alembic", "scipy"}


def _pins(lock: Path) -> dict[str, str]:
    pins = {}
    for line in lock.read_text().splitlines():
        if match := re.match(r"^([A-Za-z0-9_.\-]+)(\[[^]]*\])?==([^\s;]+)", line):
            pins[_normal(match.group(1))] = match.group(3)
    return pins


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_server_lock_pins_exactly_what_the_tested_lock_pins():
    dev, server = _pins(LOCKS / "dev.lock"), _pins(LOCKS / "server.lock")
    assert server and set(server) <= set(dev)
    assert {name: version for name, version in server.items() if dev[name] != version} == {}
    assert server["ai-edge-litert"] == "1.4.0", "the Triton image's Python 3.10 has no newer LiteRT"


def test_the_tested_environment_is_the_locked_one():
    """What these tests run on is what requirements/dev.lock says (make setup installs it)."""
    differing = {}
    for name, version in _pins(LOCKS / "dev.lock").items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = None
        if installed != version:
            differing[name] = (version, installed)
    assert differing == {}, "run `make setup` (the venv predates the lock): locked vs installed"


def test_images_install_the_locked_versions():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pip install -r requirements/server.lock" in dockerfile
    assert "pip install --no-deps ." in dockerfile, "the project itself must not re-resolve its dependencies"
    # NGC Triton's own Python gets the lock's numpy and LiteRT for the litert backend.
    assert re.search(r"pip install [^\n]*\$\(grep [^\n]*numpy\|ai-edge-litert[^\n]*server\.lock\)", dockerfile)
    assert not re.search(r"(numpy|ai-edge-litert)==\d", dockerfile), "a version written outside the lock"


def test_the_client_package_pulls_in_no_server_dependency(tmp_path: Path):
    report = tmp_path / "report.json"
    # What a fresh virtualenv would get from `pip install cutout` (resolved, nothing installed).
    dry_run = ["install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report)]
    subprocess.run(
        [sys.executable, "-m", "pip", *dry_run, str(ROOT)],
        check=True,
        timeout=300,
        capture_output=True,
    )
    installed = {_normal(item["metadata"]["name"]) for item in json.loads(report.read_text())["install"]}
    assert "cutout" in installed and "grpcio" in installed
    assert installed & SERVER_ONLY == set(), installed & SERVER_ONLY
    assert "pydantic-settings" not in installed and "cryptography" not in installed


@pytest.mark.parametrize("module", ["cutout.cli", "cutout.client", "cutout.batch"])
def test_the_client_code_imports_nothing_of_the_servers(module: str):
    """Run with every server-only module made unimportable: the client still loads."""
    blocked = sorted({"services", "pydantic_settings", "sqlmodel", "tritonclient", "scipy", "cryptography"})
    probe = f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError(f"the client imported {{name}}")
sys.meta_path.insert(0, Block())
import {module}
"""
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
