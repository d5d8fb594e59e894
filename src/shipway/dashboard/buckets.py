"""A window cut into evenly spaced buckets, each the merge of its seconds, merged only once.

A dashboard polls every 2 s for the same window: merging its 3,600 seconds (an hour) into
240 buckets at every poll would stall the event loop for tens of milliseconds, in front of
every request in flight. A second that has passed never changes (``RecentStats`` records
into the current second only), so a bucket whose seconds have all passed is merged once and
kept (``BucketCache``, owned by the routes); a poll merges only the bucket still filling and
the one the window's start cuts through.

Buckets are aligned to multiples of the step, not to "now", so a point keeps its value from
one poll to the next instead of shifting as the window slides.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from shipway.telemetry.recent import ModelSecond, SecondAggregate

__all__ = ["MAX_POINTS", "Bucket", "BucketCache", "merge_seconds", "step_for"]

MAX_POINTS = 300
_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600)


def step_for(window_s: int) -> int:
    """The smallest step (seconds) that cuts ``window_s`` into at most 300 buckets."""
    for step in _STEPS:
        if window_s / step <= MAX_POINTS:
            return step
    return _STEPS[-1]


@dataclass(slots=True)
class Bucket:
    start: int
    span: int
    """Seconds of the window it covers (less than the step at the window's start)."""
    merged: SecondAggregate | None
    """Its seconds merged; ``None`` when none was recorded (the server was not running)."""
    point: dict[str, Any] | None = None
    """Its chart values, computed once by series.py."""


class BucketCache:
    """Merged buckets whose seconds have all passed, a window's worth per step."""

    def __init__(self) -> None:
        self._by_step: dict[int, dict[int, Bucket]] = {}

    def buckets(
        self, seconds: Sequence[SecondAggregate], *, start_s: int, end_s: int, step: int
    ) -> list[Bucket]:
        """The buckets of ``[start_s, end_s)``, oldest first; ``seconds`` (oldest first, as
        ``RecentStats.seconds`` gives them) must cover that span."""
        first = start_s // step * step
        done = self._by_step.setdefault(step, {})
        out = []
        for start in range(first, end_s, step):
            bucket = done.get(start)
            if bucket is None:
                bucket = _bucket(seconds, start, start_s, end_s, step)
                if start >= start_s and start + step <= end_s:  # whole, and in the past
                    done[start] = bucket
            out.append(bucket)
        if len(done) > MAX_POINTS + 2:  # another window with this step came and went
            for start in [b for b in done if b < first]:
                del done[start]
        return out

    def fill(
        self,
        seconds: Sequence[SecondAggregate],
        *,
        start_s: int,
        end_s: int,
        step: int,
        budget_s: int = 1800,
    ) -> bool:
        """Merge the window's missing whole buckets, about ``budget_s`` seconds of them at a
        time (some milliseconds); True while some remain. The route yields to the event
        loop between calls, so a day's window read for the first time stalls no request."""
        done = self._by_step.setdefault(step, {})
        merged = 0
        for start in range(-(-start_s // step) * step, end_s - step + 1, step):
            if start not in done:
                if merged >= budget_s:
                    return True
                done[start] = _bucket(seconds, start, start_s, end_s, step)
                merged += step
        return False


def _bucket(
    seconds: Sequence[SecondAggregate], start: int, start_s: int, end_s: int, step: int
) -> Bucket:
    # ``seconds`` is sorted: find this bucket's by bisection, not by a scan.
    low, high = max(start, start_s), min(start + step, end_s)
    lo = bisect_left(seconds, low, key=_second)
    mine = seconds[lo : bisect_left(seconds, high, lo, key=_second)]
    return Bucket(start, high - low, merge_seconds(mine, start) if mine else None)


def _second(aggregate: SecondAggregate) -> int:
    return aggregate.second


def merge_seconds(seconds: Iterable[SecondAggregate], start: int) -> SecondAggregate:
    """One aggregate for many seconds: counts summed, histograms merged, gauges at their
    peak (a queue that filled for one second of the bucket must still show)."""
    out = SecondAggregate(start)
    for second in seconds:
        for model, agg in second.models.items():
            into = out.models.get(model)
            if into is None:
                into = out.models[model] = ModelSecond()
            _add(into, agg)
        for gauge, value in second.gauges.items():
            out.gauges[gauge] = max(value, out.gauges.get(gauge, value))
    return out


def _add(into: ModelSecond, agg: ModelSecond) -> None:
    # Every field of ModelSecond (a unit test fails when one is added and not merged here).
    into.requests += agg.requests
    into.errors += agg.errors
    _add_counts(into.errors_by_type, agg.errors_by_type)
    _add_counts(into.latency, agg.latency)
    _add_counts(into.ttft, agg.ttft)
    into.prompt_tokens += agg.prompt_tokens
    into.completion_tokens += agg.completion_tokens
    into.cost += agg.cost
    into.confidence_sum += agg.confidence_sum
    into.confidence_count += agg.confidence_count


def _add_counts(into: dict[Any, int], counts: dict[Any, int]) -> None:
    for key, count in counts.items():
        into[key] = into.get(key, 0) + count
