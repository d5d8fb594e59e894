"""Counters in this process's memory: exact for one replica, the embedded default.

Each call runs without an ``await`` between reading and writing, so on one event loop it is
atomic without a lock. Windows are aligned to the epoch of the injected clock (wall-clock
seconds by default) so ``reset_after_s`` means the same thing as with Redis.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from shipway.store.counter import Counter, CounterResult, Hit, window_ms

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

    async def _hit_many(self, hits: Sequence[Hit]) -> list[CounterResult]:
        now = self._now_ms()
        self._sweep(now)
        windows = self._windows
        found: list[_Window] = []
        fits = True
        for key, amount, limit, window_s in hits:
            length = window_ms(window_s)
            start = now - now % length
            window = windows.get(key)
            if window is None or window.start != start or window.end != start + length:
                # A new window (or the key reused with another length: a new count, as in
                # Redis), stored once something is counted in it.
                window = _Window(start, start + length, 0)
            found.append(window)
            if window.count + amount > limit:
                fits = False
        results: list[CounterResult] = []
        for i, (key, amount, limit, _) in enumerate(hits):
            window = found[i]
            if fits:
                if amount:
                    window.count += amount
                    windows[key] = window
                allowed = True
            else:
                allowed = window.count + amount <= limit
            results.append(
                CounterResult(
                    allowed,
                    limit,
                    max(limit - window.count, 0),
                    (window.end - now) / 1000,
                    window.start,
                )
            )
        return results

    async def _adjust_many(self, held: Sequence[tuple[str, int]], delta: int) -> None:
        now = self._now_ms()
        for key, window in held:
            current = self._windows.get(key)
            if current is not None and current.start == window and current.end > now:
                current.count = max(current.count + delta, 0)

    def _sweep(self, now: int) -> None:
        self._calls += 1
        if self._calls % _SWEEP_EVERY:
            return
        for key in [key for key, window in self._windows.items() if window.end <= now]:
            del self._windows[key]
