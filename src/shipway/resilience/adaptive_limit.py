"""A concurrency limit per upstream that follows its latency (AIMD), so a slow upstream
cannot pile up requests.

As in Envoy's adaptive concurrency filter and Netflix's concurrency-limits: the baseline is
the best latency seen recently; a call slower than `latency_tolerance` * baseline (or one
that failed from overload) means requests are queueing inside the upstream, so the limit is
cut multiplicatively; otherwise it grows by one per `limit` fast calls (one per round of the
whole limit). Only a call that started after the last cut may cut again: the calls already in
flight were admitted under the old limit and say nothing about the new one, and without this
rule one slow burst would collapse the limit to its minimum.

The baseline is the minimum over the current and the previous `baseline_window_s`, so it is
re-measured as time passes: an upstream that got permanently slower is not throttled forever.
Feed it a latency that does not scale with the answer's length (time to first token or to
the response headers), or long answers will look like congestion.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from shipway.config_resilience import AdaptiveConcurrencySettings
from shipway.errors import ConcurrencyLimited

__all__ = ["AdaptiveLimit"]


class AdaptiveLimit:
    def __init__(
        self,
        settings: AdaptiveConcurrencySettings,
        max_limit: int,
        clock: Callable[[], float],
        *,
        model: str = "",
        baseline_window_s: float = 60.0,
    ) -> None:
        self.settings = settings
        self.model = model
        self.max_limit = max_limit
        self.min_limit = min(settings.min_limit, max_limit)
        self._enabled = settings.enabled
        self._clock = clock
        self._baseline_window_s = baseline_window_s
        self.limit = max_limit
        self.in_flight = 0
        self._fast_calls = 0  # fast calls since the limit last grew
        self._last_cut_at = -math.inf
        self._window_start = clock()
        self._best = math.inf  # the current baseline window's minimum
        self._previous_best = math.inf

    # -- the hot path ----------------------------------------------------------------------
    def try_acquire(self) -> bool:
        """Take a slot if fewer than ``limit`` calls are in flight (always, when disabled)."""
        if self.in_flight >= self.limit and self._enabled:
            return False
        self.in_flight += 1
        return True

    def release(self) -> None:
        """Give back the slot of ``try_acquire``, whatever the outcome (call it in finally)."""
        self.in_flight -= 1

    def on_done(self, latency_s: float | None, ok: bool) -> None:
        """A finished call: ``ok`` False for a failure that signals overload (a timeout, a
        429/503, a reset); failures that say nothing about load are not reported at all.
        ``latency_s`` None: a success with no latency worth comparing (a plain answer, whose
        time grows with its length): it counts towards growth, never as congestion."""
        if not self._enabled:
            return
        now = self._clock()
        if now - self._window_start >= self._baseline_window_s:
            self._previous_best, self._best = self._best, math.inf
            self._window_start = now
        if latency_s is None:
            congested = False
            latency_s = 0.0
        elif ok:
            # Only successes set the baseline: a fast failure is no measure of serving time.
            if latency_s < self._best:
                self._best = latency_s
            congested = latency_s > self.settings.latency_tolerance * self.baseline_s
        else:
            congested = True
        if congested:
            if now - latency_s >= self._last_cut_at:
                cut = math.floor(self.limit * self.settings.backoff_ratio)
                self.limit = max(self.min_limit, cut)
                self._last_cut_at = now
                self._fast_calls = 0
            return
        self._fast_calls += 1
        if self._fast_calls >= self.limit:
            self._fast_calls = 0
            if self.limit < self.max_limit:
                self.limit += 1

    # -- reading ---------------------------------------------------------------------------
    @property
    def baseline_s(self) -> float:
        """The best recent latency (infinite before the first success)."""
        return min(self._best, self._previous_best)

    def limited_error(self) -> ConcurrencyLimited:
        """The error for a call refused because the limit is full."""
        return ConcurrencyLimited(
            f"model {self.model!r} is answering slowly, so its concurrency limit is down to "
            f"{self.limit} requests in flight (of {self.max_limit}) and all are taken; retry "
            "shortly",
            retry_after=1.0,
        )

    def snapshot(self) -> dict[str, Any]:
        baseline = self.baseline_s
        return {
            "enabled": self._enabled,
            "limit": self.limit,
            "max_limit": self.max_limit,
            "in_flight": self.in_flight,
            "baseline_s": None if math.isinf(baseline) else round(baseline, 4),
        }
