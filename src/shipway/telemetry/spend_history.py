"""Spend per (team, model) in minute buckets, in memory: what cost-anomaly alerts read.

``RecentStats`` keeps an hour of seconds per model; a spend baseline needs a day, and teams,
so this keeps minutes per (team, model) instead. ``record`` runs once per call on the hot path:
a dictionary lookup, a comparison and an addition while the minute lasts; a new minute closes
the last one onto the key's arrays of minutes and cumulative spend, so the spend over any span
is two binary searches and a subtraction, not a sum over 1,440 buckets. Keys are bounded:
past ``max_keys`` the one idle longest goes. One node's view, like ``RecentStats`` (each
replica sees its share of the traffic); nothing is kept across restarts.
"""

from __future__ import annotations

import bisect
import math
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field

from shipway.errors import ConfigError

__all__ = ["SpendHistory", "SpendRates"]

_MINUTE = 60


@dataclass(slots=True)
class _Series:
    """Closed minutes as parallel arrays (16 bytes a minute, not boxed floats in a deque)."""

    minute: int  # the open minute; `current` is its spend so far
    current: float
    known_since: float  # spend before this is unknown (not zero): the baseline starts here
    minutes: array[int] = field(default_factory=lambda: array("q"))  # ascending
    cum: array[float] = field(default_factory=lambda: array("d"))  # spend through each minute
    head: int = 0  # minutes before `head` have left the history
    base: float = 0.0  # `cum` just before `minutes[head]`
    last_cum: float = 0.0  # `cum` through the last closed minute

    def close(self) -> None:
        self.last_cum += self.current
        self.minutes.append(self.minute)
        self.cum.append(self.last_cum)

    def prune(self, oldest: int) -> None:
        """Forget the minutes up to ``oldest``; compact once most of the arrays are dead."""
        i = bisect.bisect_right(self.minutes, oldest, self.head)
        if i > self.head:
            self.base, self.head = self.cum[i - 1], i
        if self.head > 64 and self.head * 2 > len(self.minutes):
            base = self.base  # rebased to zero, so the running sums never grow large
            self.minutes = self.minutes[self.head :]
            self.cum = array("d", (c - base for c in self.cum[self.head :]))
            self.head, self.base, self.last_cum = 0, 0.0, self.last_cum - base

    def since(self, minute: int) -> float:
        """Spend in the closed minutes from ``minute`` on."""
        i = bisect.bisect_left(self.minutes, minute, self.head)
        return self.last_cum - (self.cum[i - 1] if i > self.head else self.base)


@dataclass(frozen=True, slots=True)
class SpendRates:
    """One key's spend over the recent window and the baseline span just before it."""

    team: str | None
    model: str
    recent: float
    recent_s: float
    baseline: float
    baseline_s: float  # shorter than asked while less history is known

    @property
    def recent_per_hour(self) -> float:
        return self.recent / self.recent_s * 3600

    @property
    def baseline_per_hour(self) -> float:
        return self.baseline / self.baseline_s * 3600 if self.baseline_s > 0 else 0.0


class SpendHistory:
    """The last ``history_s`` seconds of spend, per minute, for at most ``max_keys`` keys."""

    def __init__(
        self,
        history_s: float = 25 * 3600,
        max_keys: int = 1000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_keys < 1 or history_s < _MINUTE:
            raise ConfigError("a spend history needs room for a key and a minute at least")
        self.history_s = history_s
        self.max_keys = max_keys
        self._minutes = math.ceil(history_s / _MINUTE)
        self._clock = clock
        # Insertion order is recency order: a key moves to the end when it opens a minute.
        self._series: dict[tuple[str | None, str], _Series] = {}
        # A key first seen now spent nothing before, back to when the history started, unless
        # a key with spend in the history was evicted: it may be this one coming back.
        self._complete_since = clock()

    def record(self, team: str | None, model: str, cost: float, now: float | None = None) -> None:
        if cost <= 0:
            return
        minute = int((self._clock() if now is None else now) // _MINUTE)
        key = (team, model)
        series = self._series.get(key)
        if series is not None and series.minute >= minute:  # (a clock step back counts here)
            series.current += cost
            return
        self._open(key, series, minute, cost)

    def _open(
        self, key: tuple[str | None, str], series: _Series | None, minute: int, cost: float
    ) -> None:
        if series is None:
            while len(self._series) >= self.max_keys:
                self._evict(minute)
            self._series[key] = _Series(minute, cost, self._complete_since)
            return
        series.close()
        series.minute, series.current = minute, cost
        series.prune(minute - self._minutes)
        self._series[key] = self._series.pop(key)

    def _evict(self, minute: int) -> None:
        oldest = next(iter(self._series))
        series = self._series.pop(oldest)
        if series.minute > minute - self._minutes:  # it had spend still in the history
            self._complete_since = max(self._complete_since, minute * _MINUTE)

    def __len__(self) -> int:
        return len(self._series)

    def rates(self, window_s: float, baseline_window_s: float) -> list[SpendRates]:
        """Every key's spend over the last ``window_s`` and the ``baseline_window_s`` before.

        Windows are whole minutes, the current one included (so the recent window is
        ``window_s`` less the rest of this minute). Keys with no spend left are dropped.
        """
        now = self._clock()
        minute = int(now // _MINUTE)
        recent_minutes = max(1, math.ceil(window_s / _MINUTE))
        recent_start = minute - recent_minutes + 1  # first minute of the recent window
        recent_s = (recent_minutes - 1) * _MINUTE + max(1.0, now - minute * _MINUTE)
        base_start = recent_start - math.ceil(baseline_window_s / _MINUTE)
        out = []
        for key, series in list(self._series.items()):
            if series.minute <= minute - self._minutes:  # idle for the whole history
                del self._series[key]
                continue
            series.prune(minute - self._minutes)
            recent = series.since(recent_start)
            baseline = series.since(base_start) - recent
            if series.minute >= recent_start:
                recent += series.current
            elif series.minute >= base_start:
                baseline += series.current
            since = max(base_start * _MINUTE, series.known_since, now - self.history_s)
            baseline_s = max(0.0, recent_start * _MINUTE - since)
            out.append(SpendRates(key[0], key[1], recent, recent_s, baseline, baseline_s))
        return out
