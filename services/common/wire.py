"""Moving a message between the public contract and the internal services' own messages.

The internal services' messages keep the field numbers and types of the public messages
they stand for (protos/cutout/v1/accounts.proto), so one becomes the other through its
bytes: every field arrives, unknown ones included. tests/deploy/test_contracts.py checks each pair
field for field, so a field added to one side only is caught there, not lost here.
"""

from __future__ import annotations

from typing import TypeVar

from google.protobuf.message import Message

M = TypeVar("M", bound=Message)


def as_message(kind: type[M], message: Message) -> M:
    """`message` read as a `kind` (a message with the same fields on the wire)."""
    return kind.FromString(message.SerializeToString())
