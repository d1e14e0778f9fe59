"""Splitting bytes for gRPC streams of chunks (kept results go in and out this way)."""

from __future__ import annotations

from collections.abc import Iterator


def pieces(data: bytes, size: int) -> Iterator[bytes]:
    """`data` in pieces of at most `size` bytes; always at least one piece, so a header can ride on it."""
    view = memoryview(data)
    yield bytes(view[:size])
    for start in range(size, len(view), size):
        yield bytes(view[start : start + size])
