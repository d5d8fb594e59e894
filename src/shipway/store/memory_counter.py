"""Counters in this process's memory: exact for one replica, the embedded default.

Each call runs without an ``await`` between reading and writing, so on one event loop it is
atomic without a lock. Windows are aligned to the epoch of the injected clock (wall-clock
seconds by default) so ``reset_after_s`` means the same thing as with Redis.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from shipway.store.counter import Counter, CounterResult

__all__ = ["MemoryCounter"]

# Ended windows are swept every this many calls: O(1) amortised, memory bounded by the keys
# used within one window length.
_SWEEP_EVERY = 4096


@dataclass(slots=True)
class _Window:
    start: int
    end: int
    count: int


class MemoryCounter(Counter):
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._windows: dict[str, _Window] = {}
        self._calls = 0

    def _now_ms(self) -> int:
        return math.floor(self._clock() * 1000)

    async def _hit(self, key: str, amount: int, limit: int, window_ms: int) -> CounterResult:
        now = self._now_ms()
        self._sweep(now)
        start = now - now % window_ms
        window = self._windows.get(key)
        if window is None or window.start != start or window.end != start + window_ms:
            # A new window (or the key reused with another length: a new count, as in Redis).
            window = _Window(start, start + window_ms, 0)
        allowed = window.count + amount <= limit
        if allowed and amount:
            window.count += amount
            self._windows[key] = window
        return CounterResult(
            allowed=allowed,
            limit=limit,
            remaining=max(limit - window.count, 0),
            reset_after_s=(window.end - now) / 1000,
            window=start,
        )

    async def _adjust(self, key: str, delta: int, window: int) -> None:
        current = self._windows.get(key)
        if current is not None and current.start == window and current.end > self._now_ms():
            current.count = max(current.count + delta, 0)

    def _sweep(self, now: int) -> None:
        self._calls += 1
        if self._calls % _SWEEP_EVERY:
            return
        for key in [key for key, window in self._windows.items() if window.end <= now]:
            del self._windows[key]
