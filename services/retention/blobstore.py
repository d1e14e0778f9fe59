"""Where encrypted result bytes live: a local folder (embedded) or S3-compatible storage.

Both only ever hold sealed bytes (see crypto.py); names are random result ids.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol


class BlobNotFound(Exception):
    pass


class BlobStore(Protocol):
    def put(self, name: str, data: bytes) -> None: ...
    def get(self, name: str) -> bytes: ...
    def delete(self, name: str) -> None: ...  # deleting what is not there is not an error
    def names(self) -> Iterator[str]: ...


class LocalBlobStore:
    """A folder; a blob appears whole or not at all (written aside, fsynced, renamed)."""

    _PARTIAL = ".partial"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, name: str) -> Path:
        if not name or "/" in name or name.startswith(".") or name.endswith(self._PARTIAL):
            raise ValueError(f"bad blob name {name!r}")
        return self.root / name

    def put(self, name: str, data: bytes) -> None:
        target = self._path(name)
        descriptor, temporary = tempfile.mkstemp(dir=self.root, prefix=f".{name}.", suffix=self._PARTIAL)
        try:
            with os.fdopen(descriptor, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
        _fsync_dir(self.root)

    def get(self, name: str) -> bytes:
        try:
            return self._path(name).read_bytes()
        except FileNotFoundError:
            raise BlobNotFound(name) from None

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(name).unlink()

    def names(self) -> Iterator[str]:
        for path in self.root.iterdir():
            if not path.name.startswith("."):
                yield path.name

    def remove_partials(self) -> int:
        """Leftovers of writes a crash interrupted (never visible as blobs)."""
        removed = 0
        for path in self.root.glob(f".*{self._PARTIAL}"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed += 1
        return removed


class S3BlobStore:
    """A bucket (and optional prefix) of any S3-compatible store, through boto3.

    A PUT is atomic in S3: an object is visible whole or not at all.
    """

    def __init__(self, client: Any, bucket: str, prefix: str = "") -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix

    def put(self, name: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.prefix + name, Body=data)

    def get(self, name: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.prefix + name)["Body"].read()
        except self.client.exceptions.NoSuchKey:
            raise BlobNotFound(name) from None

    def delete(self, name: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.prefix + name)

    def names(self) -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for item in page.get("Contents", []):
                yield item["Key"][len(self.prefix) :]


def _fsync_dir(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
