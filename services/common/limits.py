"""Counters that turn callers away before they cost work: concurrency budgets and rates.

Concurrency is counted in the process (what it bounds is this process's memory and
threads). Rates are counted in the process in the embedded default, or in Redis when a
URL is configured, so that every gateway replica of a cell shares one count per key.
Refusals say how long to wait: `Refused.retry_after_s` becomes a google.rpc.RetryInfo.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import defaultdict
from typing import Protocol


class Refused(Exception):
    """A budget or a rate is used up; retry after `retry_after_s` seconds."""

    def __init__(self, what: str, retry_after_s: float) -> None:
        super().__init__(what)
        self.what = what
        self.retry_after_s = retry_after_s


class Budget:
    """At most `size` holders at once per key (one key: a process-wide budget); never waits."""

    def __init__(self, size: int, what: str, retry_after_s: float = 1.0) -> None:
        self.size = size
        self.what = what
        self.retry_after_s = retry_after_s
        self._held: dict[str, int] = defaultdict(int)

    def acquire(self, key: str = "") -> None:
        if self._held[key] >= self.size:
            raise Refused(self.what, self.retry_after_s)
        self._held[key] += 1

    def release(self, key: str = "") -> None:
        self._held[key] -= 1
        if self._held[key] <= 0:
            del self._held[key]

    def held(self, key: str = "") -> int:
        return self._held.get(key, 0)


class RateLimiter(Protocol):
    async def take(self, key: str) -> None:
        """Counts one call for `key`; raises Refused if its rate is used up."""


class LocalRate:
    """A token bucket per key: `per_second` calls on average, bursts up to `burst`."""

    def __init__(self, per_second: float, burst: int, what: str) -> None:
        self.per_second = per_second
        self.burst = burst
        self.what = what
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, when)

    async def take(self, key: str) -> None:
        now = time.monotonic()
        tokens, then = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) * self.per_second)
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            raise Refused(self.what, (1 - tokens) / self.per_second)
        self._buckets[key] = (tokens - 1, now)
        if len(self._buckets) > 100_000:  # forget full buckets, which hold nothing
            self._buckets = {k: v for k, v in self._buckets.items() if v[0] < self.burst}


class RedisRate:
    """A fixed window per key in Redis (INCR + EXPIRE): at most `per_second * window_s`
    calls per window, shared by every process that uses the same Redis."""

    def __init__(self, url: str, per_second: float, window_s: int, what: str, prefix: str = "cutout:rate:") -> None:
        import redis.asyncio

        self.redis = redis.asyncio.from_url(url)
        self.limit = max(1, math.floor(per_second * window_s))
        self.window_s = window_s
        self.what = what
        self.prefix = prefix

    async def take(self, key: str) -> None:
        window = int(time.time() // self.window_s)
        name = f"{self.prefix}{key}:{window}"
        async with self.redis.pipeline(transaction=True) as pipe:
            count, _ = await pipe.incr(name).expire(name, self.window_s * 2).execute()
        if count > self.limit:
            raise Refused(self.what, (window + 1) * self.window_s - time.time())

    async def close(self) -> None:
        await self.redis.aclose()


def rate_limiter(redis_url: str, per_second: float, burst: int, what: str) -> RateLimiter:
    """Redis-backed when `redis_url` is set (shared by replicas), else in this process."""
    if redis_url:
        return RedisRate(redis_url, per_second, window_s=max(1, math.ceil(burst / per_second)), what=what)
    return LocalRate(per_second, burst, what)


class FairSlots:
    """`total` slots shared by owners, at most `per_owner` held by any one; acquiring waits
    (flow control: the caller stops reading until a slot frees), and the owners that hold
    fewer are not queued behind the one that holds its maximum."""

    def __init__(self, total: int, per_owner: int) -> None:
        self._total = asyncio.Semaphore(total)
        self.per_owner = per_owner
        self._owners: dict[str, tuple[asyncio.Semaphore, list[int]]] = {}

    async def acquire(self, owner: str) -> None:
        own, users = self._owners.setdefault(owner, (asyncio.Semaphore(self.per_owner), [0]))
        users[0] += 1
        try:
            await own.acquire()
            try:
                await self._total.acquire()
            except BaseException:
                own.release()
                raise
        except BaseException:
            self._leave(owner)
            raise

    def release(self, owner: str) -> None:
        self._total.release()
        self._owners[owner][0].release()
        self._leave(owner)

    def _leave(self, owner: str) -> None:
        users = self._owners[owner][1]
        users[0] -= 1
        if users[0] == 0:
            del self._owners[owner]


class Backoff:
    """Failures per key (an account, an e-mail): after `free` of them in a row, the key is
    refused for 2, 4, 8, ... seconds (at most `max_s`) after each further failure; a
    success clears it. Thread-safe (password checks run in threads)."""

    def __init__(self, free: int, max_s: float, what: str) -> None:
        self.free = free
        self.max_s = max_s
        self.what = what
        self._lock = threading.Lock()
        self._failures: dict[str, tuple[int, float]] = {}  # key -> (failures, refused until)

    def check(self, key: str) -> None:
        """Raises Refused while `key` is backing off."""
        with self._lock:
            _, until = self._failures.get(key, (0, 0.0))
        wait = until - time.monotonic()
        if wait > 0:
            raise Refused(self.what, wait)

    def failed(self, key: str) -> None:
        with self._lock:
            count, _ = self._failures.get(key, (0, 0.0))
            count += 1
            delay = 0.0 if count <= self.free else min(self.max_s, 2.0 ** (count - self.free))
            self._failures[key] = (count, time.monotonic() + delay)
            if len(self._failures) > 100_000:  # forget the oldest
                self._failures.pop(next(iter(self._failures)))

    def succeeded(self, key: str) -> None:
        with self._lock:
            self._failures.pop(key, None)
