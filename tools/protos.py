"""Compile protos/ into the importable package cutout/v1 (the one contract source).

python -m tools.protos          # regenerate cutout/v1/*_pb2*.py
python -m tools.protos --check  # exit 1 if the committed code differs from the protos
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from importlib import resources
from pathlib import Path

from google.rpc import status_pb2
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PACKAGE_DIR = Path("cutout") / "v1"
GENERATED_PATTERNS = ("*_pb2.py", "*_pb2.pyi", "*_pb2_grpc.py")


def well_known_roots() -> list[Path]:
    """Where protoc finds google/protobuf/*.proto and google/rpc/status.proto."""
    well_known = Path(str(resources.files("grpc_tools") / "_proto"))
    googleapis = Path(status_pb2.__file__).parents[2]  # google/rpc/status.proto, from googleapis-common-protos
    return [well_known, googleapis]


def generate(out_root: Path) -> list[Path]:
    """Writes the generated modules under out_root/cutout/v1 and returns their paths."""
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / PACKAGE_DIR).glob("*.proto"))
    (out_root / PACKAGE_DIR).mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        *(f"-I{root}" for root in well_known_roots()),
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed; see the messages above")
    return sorted(p for pattern in GENERATED_PATTERNS for p in (out_root / PACKAGE_DIR).glob(pattern))


def stale_files() -> list[str]:
    """Names of generated files that are missing, extra or different from a fresh build."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = {p.name: p for p in generate(Path(tmp))}
        committed = {p.name: p for pattern in GENERATED_PATTERNS for p in (ROOT / PACKAGE_DIR).glob(pattern)}
        names = sorted(fresh.keys() | committed.keys())
        return [
            name
            for name in names
            if name not in fresh
            or name not in committed
            or not filecmp.cmp(fresh[name], committed[name], shallow=False)
        ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare; do not write")
    if parser.parse_args().check:
        stale = stale_files()
        if stale:
            print(f"generated code is out of date: {', '.join(stale)}; run `make protos`", file=sys.stderr)
            return 1
        return 0
    for path in (ROOT / PACKAGE_DIR).glob("*_pb2*.py*"):
        path.unlink()
    generate(ROOT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
