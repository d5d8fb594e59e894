"""The latency-driven concurrency limit (AIMD) against a clock the test moves."""

from __future__ import annotations

from shipway.config_resilience import AdaptiveConcurrencySettings
from shipway.errors import ConcurrencyLimited
from shipway.resilience.adaptive_limit import AdaptiveLimit


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def limiter(clock: Clock, max_limit: int = 20, **settings: object) -> AdaptiveLimit:
    fields: dict[str, object] = {"enabled": True, "min_limit": 2, "latency_tolerance": 2.0}
    fields.update(settings)
    return AdaptiveLimit(
        AdaptiveConcurrencySettings.model_validate(fields), max_limit, clock, model="m"
    )


def run(limit: AdaptiveLimit, clock: Clock, latency: float, calls: int, ok: bool = True) -> None:
    """``calls`` calls one after another, each taking ``latency``."""
    for _ in range(calls):
        assert limit.try_acquire()
        clock.now += latency
        limit.on_done(latency, ok)
        limit.release()


def test_starts_at_the_maximum_and_refuses_past_the_limit() -> None:
    limit = limiter(Clock(), max_limit=3)
    assert [limit.try_acquire() for _ in range(4)] == [True, True, True, False]
    limit.release()
    assert limit.try_acquire()
    error = limit.limited_error()
    assert isinstance(error, ConcurrencyLimited)
    assert (error.status, error.code, error.retry_after) == (503, "upstream_overloaded", 1.0)


def test_shrinks_under_rising_latency_and_never_below_the_minimum() -> None:
    clock = Clock()
    limit = limiter(clock, backoff_ratio=0.5)
    run(limit, clock, 0.1, 10)
    assert limit.limit == 20 and limit.baseline_s == 0.1
    run(limit, clock, 0.15, 10)  # slower, but within the tolerance
    assert limit.limit == 20
    seen = []
    for _ in range(8):
        run(limit, clock, 0.5, 1)
        seen.append(limit.limit)
    assert seen == [10, 5, 2, 2, 2, 2, 2, 2]


def test_failures_from_overload_shrink_it_without_moving_the_baseline() -> None:
    clock = Clock()
    limit = limiter(clock)
    run(limit, clock, 0.1, 5)
    run(limit, clock, 0.001, 1, ok=False)  # a fast failure: not a new best latency
    assert limit.limit == 18  # floor(20 * 0.9)
    assert limit.baseline_s == 0.1


def test_calls_already_in_flight_at_a_cut_do_not_cut_again() -> None:
    clock = Clock()
    limit = limiter(clock)
    run(limit, clock, 0.1, 5)
    for _ in range(10):  # ten slow calls, all started before the first of them finished
        assert limit.try_acquire()
    clock.now += 1.0
    for _ in range(10):
        limit.on_done(1.0, True)
        limit.release()
    assert limit.limit == 18  # one cut, not ten
    clock.now += 0.1
    run(limit, clock, 1.0, 1)  # started after the cut: it sees the new limit, and cuts
    assert limit.limit == 16


def test_recovers_by_one_per_round_when_fast_and_never_above_the_maximum() -> None:
    clock = Clock()
    limit = limiter(clock, backoff_ratio=0.5)
    run(limit, clock, 0.1, 1)
    run(limit, clock, 1.0, 1)
    assert limit.limit == 10
    run(limit, clock, 0.1, 9)
    assert limit.limit == 10
    run(limit, clock, 0.1, 1)  # the tenth fast call: one round of the limit
    assert limit.limit == 11
    run(limit, clock, 0.1, 11)
    assert limit.limit == 12
    run(limit, clock, 0.1, 1000)
    assert limit.limit == 20


def test_the_baseline_is_measured_again_over_time() -> None:
    clock = Clock()
    limit = limiter(clock, backoff_ratio=0.5)
    run(limit, clock, 0.1, 3)
    run(limit, clock, 0.5, 1)
    assert limit.limit == 10
    # The upstream got slower for good: after two baseline windows, 0.5 s is its new normal.
    clock.now += 61.0
    run(limit, clock, 0.5, 1)
    clock.now += 61.0
    run(limit, clock, 0.5, 1)
    assert limit.baseline_s == 0.5
    before = limit.limit
    run(limit, clock, 0.5, 100)
    assert limit.limit > before


def test_disabled_never_refuses() -> None:
    clock = Clock()
    limit = limiter(clock, max_limit=2, enabled=False)
    assert all(limit.try_acquire() for _ in range(10))
    run(limit, clock, 5.0, 3, ok=False)
    assert limit.limit == 2
    assert limit.snapshot()["in_flight"] == 10
