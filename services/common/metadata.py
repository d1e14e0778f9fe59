"""Reading call metadata the same way in every service.

A credential sent twice (two `x-api-key` entries) would be read differently by whoever takes
the first and whoever takes the last: the gateway once authenticated the last and accounts
served the first, so an export with keys A then B mixed A's profile with B's results. The
one rule: a credential appears at most once, or the call is refused.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc

from services.common.errors import ServiceError
from services.common.settings import ADMIN_TOKEN_METADATA, API_KEY_METADATA

# Metadata that names who is calling: never more than one of each.
SINGLE = (API_KEY_METADATA, ADMIN_TOKEN_METADATA)


def repeated_credential(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The name of a credential the metadata carries more than once, or None."""
    seen: set[str] = set()
    for key, _ in metadata or ():
        if key in SINGLE:
            if key in seen:
                return key
            seen.add(key)
    return None


def repeated_error(name: str) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"the call carries more than one {name} metadata entry; send exactly one",
        reason="METADATA_REPEATED",
        field=name,
    )


def single_value(metadata: Iterable[tuple[str, str | bytes]] | None, name: str) -> str:
    """The one value of `name` ("" if absent); more than one is INVALID_ARGUMENT."""
    values = [value for key, value in metadata or () if key == name]
    if len(values) > 1:
        raise repeated_error(name)
    if not values:
        return ""
    value = values[0]
    return value.decode() if isinstance(value, bytes) else value
