"""Recent traffic in memory: per-second aggregates in a ring buffer, per model.

The dashboard draws its charts from it, ``shipway stats`` prints it and the alert engine
evaluates its rules over it, all without Prometheus. One node's view only (each replica keeps
its own); for a fleet, the same numbers are in ``/metrics``.

A call costs one dictionary lookup and a few additions (``record``); latency percentiles
come from log-spaced histogram buckets (about 12% wide), merged over the window asked for.
Seconds older than ``history_s`` are dropped as new ones arrive.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "RecentStats",
    "SecondAggregate",
    "WindowSummary",
    "bucket_of",
    "bucket_upper",
    "quantile",
]

# Latency buckets: bucket i holds values up to _FIRST * _RATIO**i seconds (1 ms … ~20 min).
_FIRST = 0.001
_RATIO = 1.125
_LOG_RATIO = math.log(_RATIO)
_BUCKETS = 120


def bucket_of(seconds: float) -> int:
    if seconds <= _FIRST:
        return 0
    return min(_BUCKETS - 1, math.ceil(math.log(seconds / _FIRST) / _LOG_RATIO))


def bucket_upper(index: int) -> float:
    return _FIRST * _RATIO**index


@dataclass(slots=True)
class ModelSecond:
    """One model's calls finished in one second."""

    requests: int = 0
    errors: int = 0
    errors_by_type: dict[str, int] = field(default_factory=dict)
    latency: dict[int, int] = field(default_factory=dict)
    ttft: dict[int, int] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    confidence_sum: float = 0.0
    confidence_count: int = 0


@dataclass(slots=True)
class SecondAggregate:
    """Everything that finished in one wall-clock second, plus gauges sampled then."""

    second: int
    models: dict[str, ModelSecond] = field(default_factory=dict)
    gauges: dict[str, float] = field(default_factory=dict)


@dataclass(slots=True)
class WindowSummary:
    """Calls over a window (optionally one model's): what alerts and tables look at."""

    seconds: float
    requests: int = 0
    errors: int = 0
    errors_by_type: dict[str, int] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    mean_confidence: float | None = None
    _latency: dict[int, int] = field(default_factory=dict)
    _ttft: dict[int, int] = field(default_factory=dict)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def cost_per_hour(self) -> float:
        return self.cost / self.seconds * 3600 if self.seconds else 0.0

    def latency_quantile(self, q: float) -> float | None:
        return quantile(self._latency, q)

    def ttft_quantile(self, q: float) -> float | None:
        return quantile(self._ttft, q)

    def to_dict(self) -> dict[str, Any]:
        return {
            "seconds": self.seconds,
            "requests": self.requests,
            "requests_per_s": round(self.requests_per_s, 3),
            "errors": self.errors,
            "error_rate": round(self.error_rate, 4),
            "errors_by_type": dict(self.errors_by_type),
            "latency_p50_s": self.latency_quantile(0.5),
            "latency_p95_s": self.latency_quantile(0.95),
            "latency_p99_s": self.latency_quantile(0.99),
            "ttft_p50_s": self.ttft_quantile(0.5),
            "ttft_p95_s": self.ttft_quantile(0.95),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost": round(self.cost, 8),
            "mean_confidence": self.mean_confidence,
        }


def quantile(buckets: dict[int, int], q: float) -> float | None:
    """The ``q`` quantile of a latency histogram (bucket index → count), as the bucket's top."""
    total = sum(buckets.values())
    if not total:
        return None
    rank = q * total
    seen = 0
    for index in sorted(buckets):
        seen += buckets[index]
        if seen >= rank:
            return round(bucket_upper(index), 6)
    return round(bucket_upper(max(buckets)), 6)


class RecentStats:
    """The last ``history_s`` seconds of calls, one aggregate per second."""

    def __init__(self, history_s: int = 3600, clock: Callable[[], float] = time.time) -> None:
        self.history_s = history_s
        self._clock = clock
        self._seconds: deque[SecondAggregate] = deque()
        self._samplers: list[Callable[[], dict[str, float]]] = []

    def add_gauges(self, sampler: Callable[[], dict[str, float]]) -> None:
        """``sampler()`` → gauge values (queue depth, workers busy …), read once a second."""
        self._samplers.append(sampler)

    def _current(self) -> SecondAggregate:
        now = int(self._clock())
        seconds = self._seconds
        if seconds and seconds[-1].second == now:
            return seconds[-1]
        current = SecondAggregate(now)
        for sampler in self._samplers:
            current.gauges.update(sampler())
        seconds.append(current)
        while seconds and seconds[0].second <= now - self.history_s:
            seconds.popleft()
        return current

    def tick(self) -> None:
        """Open this second's aggregate (and sample the gauges) even with no traffic."""
        self._current()

    def record(
        self,
        model: str,
        *,
        status: int,
        error_type: str | None,
        latency_s: float,
        ttft_s: float | None = None,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        cost: float = 0.0,
        confidence: float | None = None,
    ) -> None:
        second = self._current()
        agg = second.models.get(model)
        if agg is None:
            agg = second.models[model] = ModelSecond()
        agg.requests += 1
        if status >= 400 and status != 499:
            # Client mistakes (4xx) count as errors by type too: a burst of 401s or 429s is
            # what an operator wants to see. A client hanging up (499) is not an error.
            agg.errors += 1
            kind = error_type or str(status)
            agg.errors_by_type[kind] = agg.errors_by_type.get(kind, 0) + 1
        index = bucket_of(latency_s)
        agg.latency[index] = agg.latency.get(index, 0) + 1
        if ttft_s is not None:
            index = bucket_of(ttft_s)
            agg.ttft[index] = agg.ttft.get(index, 0) + 1
        agg.prompt_tokens += prompt_tokens
        agg.completion_tokens += completion_tokens
        agg.cost += cost
        if confidence is not None:
            agg.confidence_sum += confidence
            agg.confidence_count += 1

    def seconds(self, last_s: float) -> list[SecondAggregate]:
        """The aggregates of the last ``last_s`` seconds, oldest first (gaps are absent)."""
        self._current()
        oldest = int(self._clock()) - last_s
        # From the newest end: a 5-minute view of an hour (or a week) of history reads 300
        # seconds, not all of them, on every poll of the dashboard.
        out: list[SecondAggregate] = []
        for second in reversed(self._seconds):
            if second.second <= oldest:
                break
            out.append(second)
        out.reverse()
        return out

    def window(self, last_s: float, model: str | None = None) -> WindowSummary:
        """Calls finished in the last ``last_s`` seconds, over every model or one."""
        return summarize(self.seconds(last_s), last_s, model)

    def models(self, last_s: float) -> list[str]:
        return sorted({m for s in self.seconds(last_s) for m in s.models})

    def latest_gauges(self) -> dict[str, float]:
        return dict(self._current().gauges)


def summarize(
    seconds: Iterable[SecondAggregate], span_s: float, model: str | None = None
) -> WindowSummary:
    out = WindowSummary(seconds=span_s)
    confidence_sum, confidence_count = 0.0, 0
    for second in seconds:
        aggs = second.models.values() if model is None else _one(second.models.get(model))
        for agg in aggs:
            out.requests += agg.requests
            out.errors += agg.errors
            for kind, count in agg.errors_by_type.items():
                out.errors_by_type[kind] = out.errors_by_type.get(kind, 0) + count
            for index, count in agg.latency.items():
                out._latency[index] = out._latency.get(index, 0) + count
            for index, count in agg.ttft.items():
                out._ttft[index] = out._ttft.get(index, 0) + count
            out.prompt_tokens += agg.prompt_tokens
            out.completion_tokens += agg.completion_tokens
            out.cost += agg.cost
            confidence_sum += agg.confidence_sum
            confidence_count += agg.confidence_count
    if confidence_count:
        out.mean_confidence = round(confidence_sum / confidence_count, 4)
    return out


def _one(agg: ModelSecond | None) -> tuple[ModelSecond, ...]:
    return () if agg is None else (agg,)
