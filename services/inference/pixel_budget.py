"""Bounds the decoded pixels one inference process holds at once.

Memory grows with every decoded picture waiting for its turn at the batcher or the
encoder; a budget in pixels (not in requests) keeps a burst of 12 MP photos from
using many times the memory of a burst of thumbnails. Callers wait for room; they
are never refused (the batcher's queue and gRPC's concurrency limit do that).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class PixelBudget:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._changed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def hold(self, pixels: int) -> AsyncIterator[None]:
        pixels = min(pixels, self.limit)  # a picture larger than the budget runs alone
        async with self._changed:
            await self._changed.wait_for(lambda: self.used + pixels <= self.limit)
            self.used += pixels
        try:
            yield
        finally:
            async with self._changed:
                self.used -= pixels
                self._changed.notify_all()
