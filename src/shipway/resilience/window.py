"""Two counts over a sliding time window, in O(1) per update.

The window is split into fixed buckets kept in a deque with running totals, so recording a
call is an integer division and two additions, and old buckets fall out as time moves on.
The window's edge is as coarse as one bucket (1/20 of the window by default): counts may
include up to one bucket's worth of calls just older than the window, which is fine for a
failure rate or a retry budget and far cheaper than keeping a timestamp per call.
"""

from __future__ import annotations

from collections import deque

__all__ = ["SlidingCounts"]


class SlidingCounts:
    """Counts ``a`` and ``b`` (calls and failures, requests and retries) over ``window_s``."""

    __slots__ = ("_a", "_b", "_buckets", "_count", "_width")

    def __init__(self, window_s: float, *, buckets: int = 20) -> None:
        self._width = window_s / buckets
        self._count = buckets
        # [bucket index, a, b]; lists rather than tuples so the newest bucket updates in place.
        self._buckets: deque[list[int]] = deque()
        self._a = 0
        self._b = 0

    def add(self, now: float, a: int = 0, b: int = 0) -> None:
        index = int(now // self._width)
        buckets = self._buckets
        if not buckets or buckets[-1][0] != index:
            self._expire(index)
            buckets.append([index, 0, 0])
        last = buckets[-1]
        last[1] += a
        last[2] += b
        self._a += a
        self._b += b

    def totals(self, now: float) -> tuple[int, int]:
        """``(a, b)`` over the window ending at ``now``."""
        self._expire(int(now // self._width))
        return self._a, self._b

    def clear(self) -> None:
        self._buckets.clear()
        self._a = self._b = 0

    def _expire(self, index: int) -> None:
        oldest_kept = index - self._count + 1
        buckets = self._buckets
        while buckets and buckets[0][0] < oldest_kept:
            _, a, b = buckets.popleft()
            self._a -= a
            self._b -= b
