"""The export archive: a zip of JSON documents (and the kept results), written as a stream.

    manifest.json     what the archive is, when it was made, what it holds
    profile.json      the profile and the consents given (age, marketing, statistics, restriction)
    api_keys.json     every key's metadata (never a key itself: only hashes are stored)
    ledger.json       every ledger entry, newest first, and the balance
    results.json      the kept results' metadata
    access_log.json   who accessed your data, when, and how (accounts and retention)
    results/<id>.<ext>  the kept results themselves, if asked

JSON field names are the protobuf JSON mapping of the API's messages (docs/reference/api.md).
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from cutout.v1 import accounts_pb2, options_pb2, rights_pb2

FORMAT = "cutout-export/1"
EXTENSIONS = {"image/png": "png", "image/webp": "webp", "image/jpeg": "jpg"}


class _Sink(io.RawIOBase):
    """Collects what zipfile writes, for the caller to take piece by piece (not seekable,
    so zipfile writes data descriptors and never goes back)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data = b"".join(self.parts)
        self.parts.clear()
        return data


class Archive:
    def __init__(self) -> None:
        self._sink = _Sink()
        self._zip = zipfile.ZipFile(self._sink, "w", compression=zipfile.ZIP_DEFLATED)

    def add_json(self, name: str, document: object) -> None:
        self._zip.writestr(name, json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n")

    def add_file(self, name: str, data: bytes) -> None:
        # Images are compressed already: stored as they are.
        self._zip.writestr(zipfile.ZipInfo(name, date_time=datetime.now(UTC).timetuple()[:6]), data, zipfile.ZIP_STORED)

    def take(self) -> bytes:
        return self._sink.take()

    def close(self) -> None:
        self._zip.close()


def _dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)


def result_name(kept: options_pb2.KeptResult) -> str:
    return f"results/{kept.result_id}.{EXTENSIONS.get(kept.media_type, 'bin')}"


def documents(
    held: accounts_pb2.AccountsExportAccountResponse,
    results: Iterable[options_pb2.KeptResult],
    access: Iterable[rights_pb2.AccessRecord],
) -> Iterator[tuple[str, object]]:
    results = list(results)
    profile = _dict(held.profile)
    yield (
        "manifest.json",
        {
            "format": FORMAT,
            "exportedAt": datetime.now(UTC).isoformat(),
            "accountId": held.profile.account_id,
            "files": ["profile.json", "api_keys.json", "ledger.json", "results.json", "access_log.json"],
        },
    )
    yield (
        "profile.json",
        {
            "profile": profile,
            "consents": {
                "ageConfirmed": held.age_confirmed,
                "marketingOptIn": held.profile.marketing_opt_in,
                "usageStatsOptOut": held.profile.usage_stats_opt_out,
                "processingRestricted": held.profile.processing_restricted,
            },
        },
    )
    yield "api_keys.json", {"keys": [_dict(key) for key in held.keys]}
    yield "ledger.json", {"balance": _dict(held.balance), "entries": [_dict(entry) for entry in held.ledger]}
    yield "results.json", {"results": [{**_dict(kept), "file": result_name(kept)} for kept in results]}
    yield "access_log.json", {"entries": [_dict(record) for record in access]}
