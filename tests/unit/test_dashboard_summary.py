"""The dashboard's summary document and chart series, from a RecentStats on a fake clock."""

from __future__ import annotations

from typing import Any

import pytest

from shipway.dashboard.buckets import BucketCache, merge_seconds, step_for
from shipway.dashboard.series import chart_series
from shipway.dashboard.summary import build_summary
from shipway.telemetry.recent import ModelSecond, RecentStats, SecondAggregate

START = 1_700_000_000  # a whole second


class Clock:
    def __init__(self) -> None:
        self.now = float(START)

    def __call__(self) -> float:
        return self.now


STATUS: dict[str, Any] = {
    "chat": {
        "ready": True,
        "state": "serving",
        "backend": "llamacpp",
        "workers": [{"state": "busy", "restarts": 1}, {"state": "idle", "restarts": 0}],
    },
    "up": {"ready": True, "state": "serving", "backend": "openai", "upstream": "http://x/v1"},
}


def _recent(clock: Clock) -> RecentStats:
    """Ten seconds of traffic on "chat" (2 calls a second, one 502 at second 5) and one
    streamed call on "up" at second 8; the queue of "chat" holds 3 at second 6."""
    recent = RecentStats(history_s=600, clock=clock)
    waiting = {"value": 0.0}
    recent.add_gauges(lambda: {"chat.waiting": waiting["value"], "chat.busy": 1.0})
    for second in range(10):
        clock.now = START + second + 0.5
        waiting["value"] = 3.0 if second == 6 else 0.0
        recent.tick()
        for _ in range(2):
            recent.record(
                "chat", status=200, error_type=None, latency_s=0.1, prompt_tokens=10,
                completion_tokens=5, cost=0.001,
            )  # fmt: skip
        if second == 5:
            recent.record("chat", status=502, error_type="upstream_error", latency_s=1.0)
        if second == 8:
            recent.record("up", status=200, error_type=None, latency_s=0.5, ttft_s=0.05)
    clock.now = START + 10.2  # the document is read early in second 10
    return recent


def _document(
    recent: RecentStats, clock: Clock, window_s: int = 60, cache: BucketCache | None = None
) -> dict[str, Any]:
    end_s, step = int(clock.now), step_for(window_s)
    buckets = (cache or BucketCache()).buckets(
        recent.seconds(window_s + 1), start_s=end_s - window_s, end_s=end_s, step=step
    )
    return build_summary(
        buckets,
        now=clock.now,
        window_s=window_s,
        step=step,
        engine_status=STATUS,
        gauges=recent.latest_gauges(),
        alerts=[{"rule": "error_rate", "severity": "critical", "model": "chat", "summary": "x"}],
        currency="EUR",
        history_s=recent.history_s,
    )


def test_totals_cover_the_window_and_add_cost_per_hour() -> None:
    clock = Clock()
    document = _document(_recent(clock), clock)
    totals = document["totals"]
    assert totals["requests"] == 22
    assert totals["errors"] == 1
    assert totals["errors_by_type"] == {"upstream_error": 1}
    assert totals["prompt_tokens"] == 200 and totals["completion_tokens"] == 100
    assert totals["cost"] == pytest.approx(0.02)
    assert totals["cost_per_hour"] == pytest.approx(0.02 / 60 * 3600)
    assert totals["latency_p50_s"] == pytest.approx(0.1, rel=0.13)
    assert totals["ttft_p50_s"] == pytest.approx(0.05, rel=0.13)
    assert document["currency"] == "EUR" and document["window_s"] == 60
    assert document["alerts"][0]["rule"] == "error_rate"


def test_model_rows_join_traffic_with_engine_state() -> None:
    clock = Clock()
    rows = {row["model"]: row for row in _document(_recent(clock), clock)["models"]}
    assert set(rows) == {"chat", "up"}
    chat = rows["chat"]
    assert chat["state"] == "serving" and chat["backend"] == "llamacpp"
    assert chat["workers"] == {"busy": 1, "idle": 1}
    assert chat["restarts"] == 1
    assert chat["requests"] == 21 and chat["errors"] == 1
    assert chat["busy"] == 1.0 and chat["waiting"] == 0.0
    up = rows["up"]
    assert up["workers"] == {} and up["requests"] == 1 and up["waiting"] is None


def test_a_model_seen_in_traffic_but_not_served_still_gets_a_row() -> None:
    clock = Clock()
    recent = RecentStats(clock=clock)
    recent.record("(unknown)", status=404, error_type="model_not_found", latency_s=0.001)
    clock.now += 1
    document = _document(recent, clock)
    unknown = next(row for row in document["models"] if row["model"] == "(unknown)")
    assert unknown["state"] == "-" and unknown["errors"] == 1


def test_series_are_per_second_over_completed_seconds() -> None:
    clock = Clock()
    series = _document(_recent(clock), clock)["series"]
    assert series["step_s"] == 1
    t = series["t"]
    assert len(t) == 60 and t[-1] == START + 9  # second 10 is still running: not drawn
    last10 = slice(50, 60)
    assert series["requests_per_s"][last10] == [2, 2, 2, 2, 2, 3, 2, 2, 3, 2]
    assert series["requests_per_s"][:50] == [None] * 50  # before the server started: gaps
    assert series["errors_per_s"]["upstream_error"][last10] == [0, 0, 0, 0, 0, 1, 0, 0, 0, 0]
    assert series["latency_s"]["p99"][55] == pytest.approx(1.0, rel=0.13)
    assert series["ttft_s"]["p50"][58] == pytest.approx(0.05, rel=0.13)
    assert series["ttft_s"]["p50"][57] is None  # no stream that second
    assert series["tokens_per_s"]["prompt"][59] == 20
    assert series["cost_cumulative"][59] == pytest.approx(0.02)
    assert series["queue_waiting"]["chat"][last10] == [0, 0, 0, 0, 0, 0, 3, 0, 0, 0]
    assert series["busy_slots"]["up"][59] is None  # no gauge for it in this sampler


def test_buckets_sum_seconds_and_divide_by_the_covered_span() -> None:
    clock = Clock()
    recent = _recent(clock)
    end_s, step = START + 10, step_for(3600)
    buckets = BucketCache().buckets(
        recent.seconds(3601), start_s=end_s - 3600, end_s=end_s, step=step
    )
    series = chart_series(buckets, ["chat"], step)
    assert series["step_s"] == 15
    assert all(start % 15 == 0 for start in series["t"])  # stable from one poll to the next
    filled = [(t, v) for t, v in zip(series["t"], series["requests_per_s"], strict=True) if v]
    # START is 5 s into a 15-s bucket: seconds 0-9 fall in it, 22 calls.
    assert len(filled) == 1 and filled[0][0] == START - START % 15
    assert filled[0][1] == pytest.approx(22 / 15, abs=0.001)
    assert series["queue_waiting"]["chat"][-1] == 3  # the peak of the bucket


def test_passed_buckets_are_merged_once_and_the_filling_one_each_time() -> None:
    clock = Clock()
    recent = _recent(clock)
    cache = BucketCache()
    first = _document(recent, clock, cache=cache)
    # Rewriting a second that has passed (which RecentStats never does) shows the cache is
    # read; a call in the current second shows up once that second has passed.
    recent.seconds(60)[0].models["chat"].requests += 100
    recent.record("up", status=200, error_type=None, latency_s=0.2)
    again = _document(recent, clock, cache=cache)
    assert again["series"]["requests_per_s"] == first["series"]["requests_per_s"]
    assert again["totals"]["requests"] == 22
    clock.now += 1
    recent.tick()
    later = _document(recent, clock, cache=cache)
    assert later["totals"]["requests"] == 23
    assert later["series"]["requests_per_s"][-1] == 1


def test_fill_merges_a_long_window_a_slice_at_a_time() -> None:
    clock = Clock()
    recent = RecentStats(history_s=7300, clock=clock)
    for _ in range(7200):
        recent.record("m", status=200, error_type=None, latency_s=0.01)
        clock.now += 1
    end_s, window_s = int(clock.now), 7200
    step = step_for(window_s)
    seconds = recent.seconds(window_s + 1)
    cache, rounds = BucketCache(), 0
    span = {"start_s": end_s - window_s, "end_s": end_s, "step": step}
    while cache.fill(seconds, budget_s=600, **span):
        rounds += 1
    assert rounds >= 7200 // 600 - 2
    filled = cache.buckets(seconds, **span)
    fresh = BucketCache().buckets(seconds, **span)
    assert [b.merged.models["m"].requests for b in filled if b.merged] == [
        b.merged.models["m"].requests for b in fresh if b.merged
    ]
    assert sum(b.merged.models["m"].requests for b in filled if b.merged) == 7200


def test_the_cache_keeps_one_window_per_step() -> None:
    clock = Clock()
    recent = _recent(clock)
    cache = BucketCache()
    for _ in range(400):
        clock.now += 1
        recent.tick()
        _document(recent, clock, window_s=60, cache=cache)
    assert sum(len(buckets) for buckets in cache._by_step.values()) <= 302


def test_merging_covers_every_field_of_a_model_second() -> None:
    one = ModelSecond(
        requests=2, errors=1, errors_by_type={"x": 1}, latency={3: 2}, ttft={1: 1},
        prompt_tokens=5, completion_tokens=7, cost=0.5, confidence_sum=1.5, confidence_count=2,
    )  # fmt: skip
    assert all(getattr(one, f) for f in ModelSecond.__dataclass_fields__), "a new field?"
    seconds = [SecondAggregate(s, {"m": one}, {"m.waiting": float(s)}) for s in (1, 2)]
    merged = merge_seconds(seconds, 0)
    for name in ModelSecond.__dataclass_fields__:
        value = getattr(one, name)
        doubled = {k: 2 * v for k, v in value.items()} if isinstance(value, dict) else 2 * value
        assert getattr(merged.models["m"], name) == doubled, name
    assert merged.gauges == {"m.waiting": 2.0}


@pytest.mark.parametrize(
    ("window_s", "step"), [(60, 1), (300, 1), (900, 5), (3600, 15), (86400, 300)]
)
def test_step_keeps_at_most_300_points(window_s: int, step: int) -> None:
    assert step_for(window_s) == step


def test_the_document_survives_json_encoding() -> None:
    import orjson

    clock = Clock()
    document = _document(_recent(clock), clock)
    assert orjson.loads(orjson.dumps(document))["totals"]["requests"] == 22
