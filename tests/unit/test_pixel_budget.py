"""The inference process's pixel budget (unit tests; the memory it bounds is in the benchmark)."""

from __future__ import annotations

import asyncio

from services.inference.pixel_budget import PixelBudget


def test_holders_never_exceed_the_budget_and_waiters_get_their_turn():
    async def scenario():
        budget = PixelBudget(10)
        peak = 0

        async def work(pixels: int) -> None:
            nonlocal peak
            async with budget.hold(pixels):
                peak = max(peak, budget.used)
                await asyncio.sleep(0.01)

        await asyncio.gather(*(work(p) for p in [4, 4, 4, 6, 3, 7, 1]))
        return peak, budget.used

    peak, left = asyncio.run(scenario())
    assert peak <= 10 and left == 0


def test_a_picture_larger_than_the_budget_runs_alone():
    async def scenario():
        budget = PixelBudget(10)
        seen = []

        async def work(pixels: int) -> None:
            async with budget.hold(pixels):
                seen.append(budget.used)
                await asyncio.sleep(0.01)

        await asyncio.wait_for(asyncio.gather(work(3), work(25), work(3)), timeout=5)
        return seen

    assert 10 in asyncio.run(scenario())
