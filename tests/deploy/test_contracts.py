"""One contract source: the committed generated code matches protos/, and the services serve it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tools.protos import ROOT, stale_files


def test_generated_code_matches_the_protos():
    assert stale_files() == [], "run `make protos` and commit the result"


def test_gateway_serves_the_public_contract_by_reflection(mesh):
    with mesh.gateway.channel() as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        reply = next(stub.ServerReflectionInfo(iter([request])))
    names = {service.name for service in reply.list_services_response.service}
    assert {"cutout.v1.Cutout", "grpc.health.v1.Health"} <= names
    assert "cutout.v1.Admin" not in names, "administration is on accounts' own listener, not the public port"
    assert "cutout.v1.Inference" not in names, "the internal service is not on the public gateway"
    assert "cutout.v1.Accounts" not in names, "the internal service is not on the public gateway"


# --- buf: lint, and no breaking change slips through (buf.yaml) ---

BUF = ROOT / "clients" / "typescript" / "node_modules" / ".bin" / "buf"
CONTRACT = ["buf.yaml", "protos", "third_party"]  # what buf reads


def _buf(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    if not BUF.exists():
        pytest.skip("buf is missing: `make setup` installs it with npm (clients/typescript); npm was not found")
    return subprocess.run([str(BUF), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def _contract_at(revision: str, into: Path) -> Path:
    """The contract as committed at `revision` (git archive: works in clones and worktrees)."""
    listed = subprocess.run(["git", "ls-tree", "--name-only", revision, *CONTRACT], cwd=ROOT, capture_output=True)
    if listed.returncode != 0 or b"buf.yaml" not in listed.stdout:
        pytest.skip(f"{revision} has no buf.yaml yet: nothing to compare against")
    archive = subprocess.run(["git", "archive", revision, *CONTRACT], cwd=ROOT, check=True, capture_output=True)
    into.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def _working_copy(into: Path) -> Path:
    into.mkdir(parents=True)
    for name in CONTRACT:
        source = ROOT / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, into / name)
    return into


def test_buf_lint_is_clean():
    result = _buf("lint")
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_breaking_change_against_main(tmp_path: Path):
    """`make test` on a branch compares its contract with main's (on main itself, with itself)."""
    main = _contract_at("main", tmp_path / "main")
    result = _buf("breaking", "--against", str(main))
    assert result.returncode == 0, "breaking changes against main (make a cutout.v2 instead):\n" + result.stdout


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        # A field renumbered: old clients' bytes would land in the wrong field.
        (lambda text: text.replace("bool keep_result = ", "bool keep_result = 9", 1), "keep_result"),
        # A field renamed: JSON and generated code break (png_compression_level went this way once).
        (lambda text: text.replace("bool keep_result = ", "bool keep_this_result = ", 1), "keep_result"),
    ],
    ids=["renumbered", "renamed"],
)
def test_buf_breaking_catches_a_deliberate_breaking_change(tmp_path: Path, change, expected: str):
    before, after = _working_copy(tmp_path / "before"), _working_copy(tmp_path / "after")
    options = after / "protos" / "cutout" / "v1" / "options.proto"
    changed = change(options.read_text())
    assert changed != options.read_text(), "the test's edit no longer applies to options.proto"
    options.write_text(changed)
    result = _buf("breaking", "--against", str(before), cwd=after)
    assert result.returncode != 0 and expected in result.stdout, result.stdout + result.stderr
