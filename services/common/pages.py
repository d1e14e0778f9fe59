"""Pages of list calls (AIP-158): the page size a request asks for, and opaque page tokens.

A token is `base64url(JSON position) "." base64url(MAC)`. The position is the last key
the previous page showed (keyset pagination: each list reads "after this key" in its own
stable order, never an offset), and the MAC is HMAC-SHA256 keyed by the account that asked
and the list's name. So a token edited by hand, cut short, or issued to another account or
for another list fails the check and is refused with INVALID_ARGUMENT. No secret is
needed (every replica checks every other's tokens, across restarts): the MAC binds a token
to its owner and its list; it does not hide the position from the owner, and an owner who
forges a position of their own list sees nothing more, since every list reads only the
authenticated account's rows. The record: docs/decisions/page-tokens.md.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from services.common.errors import ServiceError, invalid_argument

_MAC_BYTES = 16
_CONTEXT = b"cutout page token v1\0"
# A token's bounds: an owner can forge a position of their own list (the MAC has no
# secret), so whatever it holds is checked before it reaches SQL: integers fit a signed
# 64-bit column, strings a key column, the whole token a few hundred bytes.
MAX_TOKEN_CHARS = 1024
MAX_STRING_CHARS = 200
INT64 = (-(2**63), 2**63 - 1)


@dataclass(frozen=True)
class PageSize:
    """A list's page sizes: `default` for 0, `maximum` caps larger requests."""

    default: int
    maximum: int

    def of(self, page_size: int, limit: int = 0) -> int:
        """The page size to serve: page_size if set (negative is INVALID_ARGUMENT), else the
        deprecated `limit` of older clients, else the default; never above the maximum."""
        if page_size < 0:
            raise invalid_argument(
                f"page_size must be 0 (the default, {self.default}) or positive (at most {self.maximum}),"
                f" not {page_size}",
                field="page_size",
            )
        return min(page_size or limit or self.default, self.maximum)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(owner: str, list_name: str, payload: bytes) -> bytes:
    key = _CONTEXT + owner.encode() + b"\0" + list_name.encode()
    return hmac.new(key, payload, hashlib.sha256).digest()[:_MAC_BYTES]


def encode(owner: str, list_name: str, position: dict[str, Any]) -> str:
    """A token for the page after `position`, valid only for `owner` on `list_name`."""
    payload = json.dumps(position, separators=(",", ":"), sort_keys=True).encode()
    return f"{_b64(payload)}.{_b64(_mac(owner, list_name, payload))}"


def _bad(why: str) -> ServiceError:
    return invalid_argument(
        f"page_token {why}; pass the next_page_token of the previous page unchanged, with the same"
        " API key's account, or leave page_token empty to start from the first page",
        field="page_token",
    )


def decode(token: str, owner: str, list_name: str) -> dict[str, Any] | None:
    """The position a token holds (None for an empty token: the first page)."""
    if not token:
        return None
    if len(token) > MAX_TOKEN_CHARS:
        raise _bad(f"is longer than any this API issues ({len(token)} characters)")
    payload_text, _, mac_text = token.partition(".")
    try:
        payload, mac = _unb64(payload_text), _unb64(mac_text)
    except (binascii.Error, ValueError):
        raise _bad("is not a page token of this API (not base64url)") from None
    if not hmac.compare_digest(mac, _mac(owner, list_name, payload)):
        raise _bad(f"was not issued for this account's {list_name}, or was altered")
    try:
        position = json.loads(payload)
    except ValueError:
        raise _bad("is damaged") from None
    if not isinstance(position, dict):
        raise _bad("is damaged")
    return position


def field(position: dict[str, Any] | None, name: str, kind: type) -> Any:
    """One value of a decoded position, of the expected type (a well-signed token of an older
    layout is refused the same way as a damaged one)."""
    if position is None:
        return None
    value = position.get(name)
    if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
        raise _bad("is from an older version of this list; start again from the first page")
    if isinstance(value, int) and not INT64[0] <= value <= INT64[1]:
        raise _bad("holds a position out of range")
    if isinstance(value, str) and len(value) > MAX_STRING_CHARS:
        raise _bad("holds a position out of range")
    return value


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Times in tokens are microseconds since the epoch, within what a datetime holds.
_MAX_MICROS = (datetime(9999, 12, 31, tzinfo=UTC) - _EPOCH) // timedelta(microseconds=1)


def time_field(position: dict[str, Any] | None, name: str) -> datetime | None:
    """A time of a decoded position (microseconds since the epoch), as an aware datetime."""
    micros = field(position, name, int)
    if micros is None:
        return None
    if not 0 <= micros <= _MAX_MICROS:
        raise _bad("holds a time out of range")
    return _EPOCH + timedelta(microseconds=micros)
