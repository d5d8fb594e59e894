"""What one evaluation of the alert rules reads from ``RecentStats``, cheaply.

An error-rate baseline spans an hour: summing an hour of seconds for every model on every
evaluation would stall the event loop for tens of milliseconds. ``RollingSums`` keeps each
span's per-model sums over the seconds already closed (only the current second still
changes), adding the seconds closed since the last evaluation and subtracting those that left
the span; an evaluation adds the current second on top. Latency histograms and error kinds
are kept the same way.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from shipway.telemetry.recent import ModelSecond, RecentStats, SecondAggregate, quantile

__all__ = ["RollingSums", "Totals", "Windows"]

# Not a model: requests naming a model nobody serves are counted under this label.
_UNKNOWN_MODEL = "(unknown)"


@dataclass(slots=True)
class Totals:
    """One model's calls, failures (by kind), cost and latency histogram over a span."""

    requests: int = 0
    errors: int = 0
    cost: float = 0.0
    latency: dict[int, int] = field(default_factory=dict)
    errors_by_type: dict[str, int] = field(default_factory=dict)

    def add(self, agg: ModelSecond, sign: int = 1) -> None:
        self.requests += sign * agg.requests
        self.errors += sign * agg.errors
        self.cost += sign * agg.cost
        _merge(self.latency, agg.latency, sign)
        if agg.errors_by_type:
            _merge(self.errors_by_type, agg.errors_by_type, sign)

    def copy(self) -> Totals:
        return Totals(
            self.requests,
            self.errors,
            self.cost,
            dict(self.latency),
            dict(self.errors_by_type),
        )

    def latency_quantile(self, q: float) -> float | None:
        return quantile(self.latency, q)


class RollingSums:
    """Per-model sums over the closed seconds of the last ``span`` seconds."""

    def __init__(self, span: float) -> None:
        self.span = span
        self._seconds: deque[SecondAggregate] = deque()
        self._sums: dict[str, Totals] = {}

    def advance(self, seconds: list[SecondAggregate], now: int) -> dict[str, Totals]:
        """``seconds``: oldest first, ending with the current second ``now`` (still open)."""
        oldest = now - self.span
        newest = self._seconds[-1].second if self._seconds else oldest
        start = bisect.bisect_right(seconds, max(newest, oldest), key=_second_of)
        for second in seconds[start:]:
            if second.second >= now:
                break
            self._apply(second, 1)
            self._seconds.append(second)
        while self._seconds and self._seconds[0].second <= oldest:
            self._apply(self._seconds.popleft(), -1)
        out = {model: totals.copy() for model, totals in self._sums.items() if totals.requests}
        if seconds and seconds[-1].second == now:
            for model, agg in seconds[-1].models.items():
                out.setdefault(model, Totals()).add(agg)
        return out

    def _apply(self, second: SecondAggregate, sign: int) -> None:
        for model, agg in second.models.items():
            totals = self._sums.get(model)
            if totals is None:
                totals = self._sums[model] = Totals()
            totals.add(agg, sign)


class Windows:
    """One evaluation pass's view of the history: each span summed once."""

    def __init__(
        self, recent: RecentStats, longest_s: float, rolling: dict[float, RollingSums]
    ) -> None:
        self._seconds = recent.seconds(longest_s)  # oldest first; the current second last
        self._now = self._seconds[-1].second if self._seconds else 0
        self._rolling = rolling
        self._totals: dict[float, dict[str, Totals]] = {}
        self.gauges = recent.latest_gauges()

    def totals(self, span: float) -> dict[str, Totals]:
        """Model → calls, failures and cost over the last ``span`` seconds."""
        found = self._totals.get(span)
        if found is None:
            sums = self._rolling.get(span)
            if sums is None:
                sums = self._rolling[span] = RollingSums(span)
            found = self._totals[span] = sums.advance(self._seconds, self._now)
        return found

    def models(self, span: float, only: list[str] | None) -> list[str]:
        seen = sorted(m for m in self.totals(span) if m != _UNKNOWN_MODEL)
        return [m for m in seen if only is None or m in only]

    def gauge_models(self, only: list[str] | None) -> list[str]:
        aliases = sorted(key[: -len(".ready")] for key in self.gauges if key.endswith(".ready"))
        return [m for m in aliases if only is None or m in only]


def _second_of(second: SecondAggregate) -> int:
    return second.second


def _merge(into: dict[Any, int], counts: dict[Any, int], sign: int) -> None:
    for key, count in counts.items():
        left = into.get(key, 0) + sign * count
        if left:
            into[key] = left
        else:
            del into[key]
