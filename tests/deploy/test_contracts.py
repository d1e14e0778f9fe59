"""One contract source: the committed generated code matches protos/, and the services serve it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

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


# --- internal messages: the same on the wire as what they replaced, and as the public ones ---

INTERNAL_SERVICES = ("cutout.v1.Accounts", "cutout.v1.Retention", "cutout.v1.Inference")


def _descriptors(proto_root: Path) -> dict[str, Any]:
    """Every message and service of a contract tree, compiled with protoc (grpc_tools)."""
    from google.protobuf import descriptor_pb2
    from grpc_tools import protoc

    from tools.protos import well_known_roots

    out = proto_root / "descriptors.pb"
    files = sorted(str(p.relative_to(proto_root / "protos")) for p in (proto_root / "protos").rglob("*.proto"))
    args = ["protoc", f"-I{proto_root / 'protos'}", *(f"-I{root}" for root in well_known_roots())]
    assert protoc.main([*args, "--include_imports", f"--descriptor_set_out={out}", *files]) == 0
    found: dict[str, Any] = {}
    for file in descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file:
        for message in file.message_type:
            found[f".{file.package}.{message.name}"] = message
        for service in file.service:
            found[f"{file.package}.{service.name}"] = service
    return found


def _wire(message: Any) -> dict[int, tuple[int, int, str]]:
    """A message's fields as the wire sees them: number -> (type, label, message type)."""
    return {field.number: (field.type, field.label, field.type_name) for field in message.field}


def _same_wire(old: Any, new: Any, where: str) -> list[str]:
    old_fields, new_fields = _wire(old), _wire(new)
    reserved = {number for span in new.reserved_range for number in range(span.start, span.end)}
    return [
        f"{where}: field {number} of {old.name} is {new_fields.get(number, 'gone')} in {new.name}"
        for number, shape in old_fields.items()
        if new_fields.get(number) != shape and number not in reserved
    ]


def test_internal_calls_stay_wire_compatible_with_main(tmp_path: Path):
    """A rolling update mixes old and new gateways and services: every internal RPC's request and
    response on main must read the same as this tree's (buf.yaml lets their names change)."""
    old = _descriptors(_contract_at("main", tmp_path / "main"))
    new = _descriptors(_working_copy(tmp_path / "here"))
    problems = []
    for service in INTERNAL_SERVICES:
        for method in old[service].method:
            now = next((m for m in new[service].method if m.name == method.name), None)
            assert now is not None, f"{service}/{method.name} is gone: an old gateway still calls it"
            for old_type, new_type in ((method.input_type, now.input_type), (method.output_type, now.output_type)):
                problems += _same_wire(old[old_type], new[new_type], f"{service}/{method.name}")
    assert problems == []


def test_each_forwarded_call_has_internal_messages_of_the_public_fields(tmp_path: Path):
    """The gateway passes account calls on as bytes (services/common/wire.py): accounts' message
    must hold each public field, so a field added to one side only fails here, not silently."""
    found = _descriptors(_working_copy(tmp_path / "here"))
    public, internal = found["cutout.v1.Cutout"], found["cutout.v1.Accounts"]
    problems = []
    for method in internal.method:
        if not method.input_type.startswith(".cutout.v1.Accounts"):
            continue  # the charging calls have no public twin
        twin = next(m for m in public.method if m.name == method.name)
        if method.name not in ("ListAccessLog", "ExportAccount"):  # the gateway builds these requests
            problems += _same_wire(found[twin.input_type], found[method.input_type], method.name)
            problems += _same_wire(found[method.input_type], found[twin.input_type], method.name)
        if method.name not in ("ListAccessLog", "ExportAccount"):  # nor answers: it merges them
            problems += _same_wire(found[method.output_type], found[twin.output_type], method.name)
            problems += _same_wire(found[twin.output_type], found[method.output_type], method.name)
    assert problems == []
