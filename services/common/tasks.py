"""Background tasks that must not be garbage-collected before they end."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def start_kept(tasks: set[asyncio.Task[Any]], work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """Starts `work` as a task held in `tasks` until it ends: the event loop keeps only a
    weak reference to a task, so one nobody holds can vanish mid-way."""
    task = asyncio.create_task(work)
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    return task
