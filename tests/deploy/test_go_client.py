"""The Go client (clients/go): its committed code is what `buf generate` makes from the
protos, its template lists every file the public contract needs, and go.mod names the
versions it is built and tested with (Debian's). tests/mesh/test_clients.py runs it."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tools.protos import ROOT

GO = ROOT / "clients" / "go"
BUF = ROOT / "clients" / "typescript" / "node_modules" / ".bin" / "buf"
PROTOS = ROOT / "protos"


def _template() -> dict:
    return yaml.safe_load((GO / "buf.gen.yaml").read_text())


def test_the_committed_go_matches_a_fresh_buf_generate(tmp_path: Path):
    if not BUF.exists():
        pytest.skip("buf is missing: `make setup` installs it with npm (clients/typescript), where npm exists")
    for plugin in ("protoc-gen-go", "protoc-gen-go-grpc"):
        if shutil.which(plugin) is None:
            pytest.skip(f"{plugin} is not installed: `make setup` installs Debian's where it runs as root with apt-get")
    template = _template()
    for plugin in template["plugins"]:
        plugin["out"] = str(tmp_path / "gen")
    (tmp_path / "buf.gen.yaml").write_text(yaml.safe_dump(template))
    # From clients/go, as docs/development/index.md#other-languages says: the template's paths are relative to it.
    subprocess.run(
        [str(BUF), "generate", "--template", str(tmp_path / "buf.gen.yaml")], cwd=GO, check=True, timeout=120
    )
    fresh = {p.relative_to(tmp_path / "gen"): p.read_text() for p in (tmp_path / "gen").rglob("*.go")}
    committed = {p.relative_to(GO / "gen"): p.read_text() for p in (GO / "gen").rglob("*.go")}
    assert fresh, "buf generate made nothing"
    assert fresh.keys() == committed.keys() and fresh == committed, (
        "run `../typescript/node_modules/.bin/buf generate` in clients/go"
    )


def test_the_template_lists_every_cutout_file_the_public_contract_imports():
    """The template lists files instead of include_imports (which would also generate
    google.rpc.Status, which grpc-go links already): a new import must join the list."""
    needed, todo = set(), ["cutout/v1/cutout.proto"]
    while todo:
        name = todo.pop()
        if name in needed:
            continue
        needed.add(name)
        todo += re.findall(r'^import "(cutout/[^"]+)";', (PROTOS / name).read_text(), flags=re.M)
    (inputs,) = _template()["inputs"]
    listed = {str((GO / path).resolve().relative_to(PROTOS)) for path in inputs["paths"]}
    assert listed == needed


def test_go_mod_requires_the_versions_it_is_tested_with():
    if shutil.which("dpkg-query") is None:
        pytest.skip("not a Debian system: the versions tested come from Debian's Go packages")
    go_mod = (GO / "go.mod").read_text()
    for package, module in (
        ("golang-google-grpc-dev", "google.golang.org/grpc"),
        ("golang-google-protobuf-dev", "google.golang.org/protobuf"),
        ("golang-github-golang-protobuf-1-5-dev", "github.com/golang/protobuf"),
    ):
        installed = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Version}", package], capture_output=True, text=True, check=False
        )
        if installed.returncode != 0 or not installed.stdout:
            pytest.skip(f"{package} is not installed: `make setup` installs it where it runs as root with apt-get")
        upstream = re.match(r"(?:\d+:)?([\d.]+)", installed.stdout).group(1)  # type: ignore[union-attr]
        assert re.search(rf"^\s*(require )?{re.escape(module)} v{re.escape(upstream)}\b", go_mod, flags=re.M), (
            f"go.mod should require {module} v{upstream} ({package})"
        )
