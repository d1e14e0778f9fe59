"""Images are processed in memory: nothing is written and nothing of them is logged."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from PIL import PngImagePlugin

from cutout.v1 import cutout_pb2
from tests.conftest import encode

MARKER = b"cutout-private-marker-7f3a9c"


def snapshot(root: Path) -> dict[Path, tuple[int, int]]:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def test_requests_write_nothing_and_log_nothing_of_the_image(mesh, gateway, astronaut):
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", MARKER.decode())
    marked_png = encode(astronaut, "PNG", pnginfo=info)
    assert MARKER in marked_png
    broken = MARKER * 100  # fails to decode: error paths must not echo it either
    before = snapshot(mesh.data_dir)

    gateway.RemoveBackground(cutout_pb2.RemoveBackgroundRequest(image=marked_png), timeout=60)
    with pytest.raises(grpc.RpcError) as caught:
        gateway.RemoveBackground(cutout_pb2.RemoveBackgroundRequest(image=broken), timeout=60)
    assert MARKER.decode() not in caught.value.details()

    after = snapshot(mesh.data_dir)
    assert set(after) == set(before), "no file may appear"
    changed = [p for p in after if after[p] != before[p]]
    # Only logs and the credit ledger (the charge) change; both are scanned for the image below.
    assert all(p.suffix == ".log" or p.name.startswith("accounts.db") for p in changed), changed
    for path in after:
        assert MARKER not in path.read_bytes(), f"{path} holds image bytes"
