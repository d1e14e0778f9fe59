"""A stream item's own answer when its work fails unexpectedly (services/gateway/streams.py),
with a fake removal that raises; streams through the real mesh: tests/mesh/test_stream.py."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from google.rpc import code_pb2

from cutout.v1 import accounts_pb2, cutout_pb2, options_pb2
from services.gateway.settings import GatewaySettings
from services.gateway.streams import Stream, Streams

SECRET = "token=hunter2 at /srv/cutout/internal.py"


class CapturedWrites:
    def __init__(self) -> None:
        self.written: list[cutout_pb2.StreamResponse] = []

    async def write(self, message: cutout_pb2.StreamResponse) -> None:
        self.written.append(message)


class FailingRemovals:
    async def remove(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(SECRET)


def test_an_item_failing_unexpectedly_gets_internal_with_an_error_id_and_never_the_text(caplog) -> None:
    async def one_item() -> tuple[Stream, Streams]:
        streams = Streams(GatewaySettings(), down=None, removals=FailingRemovals())  # type: ignore[arg-type]
        stream = Stream(CapturedWrites(), items_in_flight=1)  # type: ignore[arg-type]
        await stream.slots.acquire()  # as the reading loop does before starting an item
        await streams.shared_slots.acquire("a1")
        item = cutout_pb2.StreamItem(id="7", image=b"not looked at")
        caller = accounts_pb2.AuthenticateResponse(account_id="a1")
        await streams._item(stream, caller, item, options_pb2.RemoveBackgroundOptions())
        return stream, streams

    stream, streams = asyncio.run(one_item())
    (answer,) = stream.context.written  # type: ignore[attr-defined]
    assert answer.item.id == "7" and answer.item.WhichOneof("outcome") == "error"
    error = answer.item.error
    assert error.code == code_pb2.INTERNAL
    assert SECRET not in error.message and "hunter2" not in str(error)
    error_id = re.search(r"error id ([0-9a-f]{16})", error.message)
    assert error_id, error.message
    assert error_id.group(1) in caplog.text, "the log holds the id, to find the exception by"
    assert (stream.ok, stream.failed) == (0, 1)
    assert stream.slots._value == 1, "the item gave its stream slot back"
    assert "a1" not in streams.shared_slots._owners, "and its account's share of the process's slots"
