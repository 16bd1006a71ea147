"""Client-side pacing of many API calls: requests/tokens-per-minute limits and a bounded worker pool.

:func:`map_concurrent` never has more than ``max_in_flight`` calls open and delivers each result as it
arrives; :class:`RateLimiter` keeps a sliding one-minute window under ``rpm`` / ``tpm``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


class RateLimiter:
    """Client-side sliding-window limits on requests and (estimated) tokens per minute."""

    def __init__(self, rpm: int | None = None, tpm: int | None = None, window_s: float = 60.0):
        self.rpm, self.tpm, self.window_s = rpm, tpm, window_s
        self._events: deque[tuple[float, int]] = deque()
        self._lock = asyncio.Lock()

    def _prune(self, now: float) -> None:
        while self._events and now - self._events[0][0] >= self.window_s:
            self._events.popleft()

    async def acquire(self, tokens: int = 0) -> None:
        if not self.rpm and not self.tpm:
            return
        async with self._lock:
            while True:
                now = time.monotonic()
                self._prune(now)
                used_tokens = sum(t for _, t in self._events)
                ok_rpm = not self.rpm or len(self._events) < self.rpm
                ok_tpm = not self.tpm or used_tokens + tokens <= self.tpm or not self._events
                if ok_rpm and ok_tpm:
                    self._events.append((now, tokens))
                    return
                await asyncio.sleep(max(self.window_s - (now - self._events[0][0]), 0.01))


async def map_concurrent(
    items: Iterable[T],
    worker: Callable[[T], Awaitable[R]],
    on_result: Callable[[T, R], None],
    *,
    max_in_flight: int,
    on_error: Callable[[T, BaseException], None] | None = None,
) -> None:
    """Run ``worker`` over ``items`` with at most ``max_in_flight`` at once.

    ``on_result`` is called (in the event loop thread) as each finishes, so callers append rows as they
    arrive. An exception stops new work, lets the tasks in flight finish (their results are still
    delivered) and is re-raised, unless ``on_error`` handles it.
    """
    queue = list(items)
    queue.reverse()
    failure: list[BaseException] = []

    async def run_one(item: T) -> None:
        try:
            result = await worker(item)
        except Exception as exc:  # noqa: BLE001
            if on_error is not None:
                on_error(item, exc)
                return
            failure.append(exc)
            return
        on_result(item, result)

    async def lane() -> None:
        while queue and not failure:
            await run_one(queue.pop())

    await asyncio.gather(*(lane() for _ in range(max(1, max_in_flight))))
    if failure:
        raise failure[0]
