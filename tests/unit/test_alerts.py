"""The alert engine's state machine and each rule kind, over RecentStats with a fake clock."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from shipway.config import AlertSettings, load_settings
from shipway.telemetry.alert_rules import DEFAULT_RULES, effective_rules
from shipway.telemetry.alerts import AlertEngine
from shipway.telemetry.recent import RecentStats
from shipway.telemetry.webhooks import AlertEvent


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Recorder:
    """A Notifier that keeps what it is given."""

    def __init__(self) -> None:
        self.events: list[AlertEvent] = []

    async def start(self) -> None:
        pass

    def notify(self, event: AlertEvent) -> None:
        self.events.append(event)

    async def stop(self) -> None:
        pass


def make(
    rules: list[dict[str, Any]],
    clock: Clock,
    *,
    default_rules: bool = False,
    registry: CollectorRegistry | None = None,
    recent: RecentStats | None = None,
) -> tuple[AlertEngine, RecentStats, Recorder]:
    settings = AlertSettings.model_validate({"rules": rules, "default_rules": default_rules})
    recent = recent or RecentStats(3 * 3600, clock=clock)
    recorder = Recorder()
    engine = AlertEngine(settings, recent, {}, registry=registry, notifier=recorder, clock=clock)
    return engine, recent, recorder


def calls(recent: RecentStats, model: str, n: int, status: int = 200, latency: float = 0.1) -> None:
    for _ in range(n):
        error = None if status < 400 else "upstream_error"
        recent.record(model, status=status, error_type=error, latency_s=latency)


ERRORS = {
    "name": "errors",
    "kind": "error_rate",
    "window_s": 60,
    "min_requests": 5,
    "for_s": 0,
    "baseline_factor": 0,
    "threshold": 0.5,
}


def test_error_rate_fires_once_and_resolves_once() -> None:
    clock = Clock()
    engine, recent, recorder = make([ERRORS], clock)
    calls(recent, "up", 8, status=502)
    calls(recent, "up", 2)
    [firing] = engine.evaluate()
    assert (firing.status, firing.rule, firing.model, firing.severity) == (
        "firing",
        "errors",
        "up",
        "warning",
    )
    assert firing.value == pytest.approx(0.8) and firing.threshold == 0.5
    assert "80.0%" in firing.summary and "upstream_error x8" in firing.summary
    for _ in range(10):  # still failing: no repeat every tick
        clock.advance(5)
        calls(recent, "up", 1, status=502)
        assert engine.evaluate() == []
    [shown] = engine.firing()
    assert shown["rule"] == "errors" and shown["model"] == "up"
    assert shown["since"] == firing.since
    clock.advance(61)  # the window passes with no calls
    [resolved] = engine.evaluate()
    assert resolved.status == "resolved" and resolved.since == firing.since
    assert resolved.at == clock.now
    assert engine.evaluate() == [] and engine.firing() == []
    assert [e.status for e in recorder.events] == ["firing", "resolved"]


def test_a_new_incident_after_resolution_notifies_again() -> None:
    clock = Clock()
    engine, recent, recorder = make([ERRORS], clock)
    for _ in range(2):
        calls(recent, "up", 6, status=500)
        engine.evaluate()
        clock.advance(61)
        engine.evaluate()
    assert [e.status for e in recorder.events] == ["firing", "resolved"] * 2


def test_pending_until_for_s_and_dropped_silently_when_it_ends() -> None:
    clock = Clock()
    engine, recent, recorder = make([{**ERRORS, "window_s": 10, "for_s": 30}], clock)
    calls(recent, "up", 6, status=500)
    assert engine.evaluate() == []  # pending
    clock.advance(11)
    assert engine.evaluate() == []  # the condition ended before `for_s`: no notification
    for _ in range(7):  # a condition held 30 s
        calls(recent, "up", 6, status=500)
        events = engine.evaluate()
        if events:
            break
        clock.advance(5)
    assert [e.status for e in recorder.events] == ["firing"]
    assert clock.now - recorder.events[0].at == 0
    assert recorder.events[0].since == clock.now


def test_few_requests_never_fire() -> None:
    clock = Clock()
    engine, recent, _ = make([ERRORS], clock)
    calls(recent, "up", 4, status=500)  # min_requests is 5
    assert engine.evaluate() == []


def test_error_rate_baseline_raises_the_threshold_up_to_the_ceiling() -> None:
    rule = {**ERRORS, "threshold": 0.05, "baseline_factor": 3, "baseline_window_s": 600}
    clock = Clock()
    engine, recent, _ = make([rule], clock)
    for _ in range(10):  # a 10% baseline: the threshold is 30%
        calls(recent, "noisy", 9)
        calls(recent, "noisy", 1, status=500)
        clock.advance(60)
    clock.advance(1)
    calls(recent, "noisy", 8)
    calls(recent, "noisy", 2, status=500)  # 20%: within its usual noise
    assert engine.evaluate() == []
    calls(recent, "noisy", 10, status=500)  # 12/20 = 60%
    [event] = engine.evaluate()
    assert event.threshold == pytest.approx(0.3)

    clock2 = Clock()
    engine2, recent2, _ = make([{**rule, "ceiling": 0.5}], clock2)
    for _ in range(10):  # a 40% baseline would make 120%: the ceiling holds it at 50%
        calls(recent2, "broken", 6)
        calls(recent2, "broken", 4, status=500)
        clock2.advance(60)
    clock2.advance(1)
    calls(recent2, "broken", 4)
    calls(recent2, "broken", 6, status=500)
    [event2] = engine2.evaluate()
    assert event2.threshold == 0.5 and event2.value == pytest.approx(0.6)


def test_latency_quantile_over_the_sla() -> None:
    rule = {"name": "slow", "kind": "latency", "threshold_s": 30, "window_s": 300, "for_s": 0}
    clock = Clock()
    engine, recent, _ = make([rule], clock)
    calls(recent, "big", 18, latency=2.0)
    calls(recent, "big", 1, latency=45.0)
    assert engine.evaluate() == []  # 19 calls: under min_requests (20), though p95 is slow
    calls(recent, "big", 1, latency=2.0)
    assert engine.evaluate() == []  # 1 slow of 20: the p95 (the 19th) is 2 s
    calls(recent, "big", 2, latency=45.0)
    [event] = engine.evaluate()  # 3 slow of 22: the p95 (the 21st) is ~45 s
    assert event.model == "big" and 40 < event.value < 52 and event.threshold == 30
    assert "p95 latency of big" in event.summary


def test_model_unavailable_and_queue_saturation_read_the_gauges() -> None:
    clock = Clock()
    recent = RecentStats(3600, clock=clock)
    gauges = {"m.ready": 1.0, "m.waiting": 0.0, "m.max_waiting": 10.0, "n.ready": 1.0}
    gauges |= {"n.waiting": 0.0, "n.max_waiting": 0.0}
    recent.add_gauges(lambda: dict(gauges))
    rules = [
        {"name": "down", "kind": "model_unavailable", "for_s": 60},
        {"name": "full", "kind": "queue_saturation", "for_s": 0, "threshold": 0.9},
    ]
    engine, _, recorder = make(rules, clock, recent=recent)
    assert engine.evaluate() == []
    gauges.update({"m.ready": 0.0, "m.waiting": 9.0, "n.waiting": 50.0})
    clock.advance(1)
    [full] = engine.evaluate()  # n has no queue at all: never "saturated"
    assert (full.rule, full.model, full.value) == ("full", "m", 0.9)
    clock.advance(30)
    assert engine.evaluate() == []  # down for 30 s of 60
    clock.advance(30)
    [down] = engine.evaluate()
    assert (down.rule, down.model, down.severity) == ("down", "m", "critical")
    gauges.update({"m.ready": 1.0, "m.waiting": 1.0})
    clock.advance(1)
    assert sorted(e.rule for e in engine.evaluate()) == ["down", "full"]
    assert [e.status for e in recorder.events] == ["firing"] * 2 + ["resolved"] * 2


def test_cost_rate_total_and_per_model() -> None:
    clock = Clock()
    rules = [
        {"name": "spend", "kind": "cost_rate", "threshold_per_hour": 10, "window_s": 3600},
        {
            "name": "spend-each",
            "kind": "cost_rate",
            "threshold_per_hour": 7,
            "window_s": 3600,
            "per_model": True,
        },
    ]
    engine, recent, _ = make(rules, clock)
    recent.record("a", status=200, error_type=None, latency_s=0.1, cost=6.0)
    recent.record("b", status=200, error_type=None, latency_s=0.1, cost=5.0)
    [total] = engine.evaluate()  # 11 per hour over all; neither model alone is over 7
    assert (total.rule, total.model, total.value) == ("spend", None, 11.0)
    recent.record("b", status=200, error_type=None, latency_s=0.1, cost=3.0)
    [each] = engine.evaluate()
    assert (each.rule, each.model, each.value) == ("spend-each", "b", 8.0)


def test_unknown_models_and_unlisted_models_are_left_out() -> None:
    clock = Clock()
    engine, recent, _ = make([{**ERRORS, "models": ["a"]}], clock)
    calls(recent, "(unknown)", 10, status=404)
    calls(recent, "b", 10, status=500)
    assert engine.evaluate() == []
    calls(recent, "a", 10, status=500)
    assert [e.model for e in engine.evaluate()] == ["a"]


def test_default_rules_and_replacing_one_by_name() -> None:
    names = [r.name for r in DEFAULT_RULES]
    assert names == [
        "latency_p95",
        "latency_p99",
        "error_rate",
        "model_unavailable",
        "queue_saturation",
        "cost_anomaly",
    ]
    settings = load_settings(None, {}).alerts
    assert [r.name for r in effective_rules(settings)] == names
    mine = AlertSettings.model_validate(
        {"rules": [{"name": "latency_p95", "kind": "latency", "threshold_s": 5}]}
    )
    rules = effective_rules(mine)
    assert [r.name for r in rules].count("latency_p95") == 1
    assert next(r for r in rules if r.name == "latency_p95").threshold_s == 5  # type: ignore[union-attr]
    off = AlertSettings.model_validate({"default_rules": False})
    assert effective_rules(off) == []


def test_defaults_stay_quiet_on_a_healthy_slow_model() -> None:
    """A small local model answering in 5-20 s with the odd client error fires nothing."""
    clock = Clock()
    engine, recent, _ = make([], clock, default_rules=True)
    for second in range(600):
        calls(recent, "smollm2-135m", 1, latency=5.0 + (second % 16))
        if second % 50 == 0:
            calls(recent, "smollm2-135m", 1, status=400)
        clock.advance(1)
        if second % 10 == 0:
            assert engine.evaluate() == []


def test_rules_firing_counter_and_log() -> None:
    clock = Clock()
    registry = CollectorRegistry()
    engine, recent, _ = make([ERRORS], clock, registry=registry)
    assert engine.rules()[0]["name"] == "errors" and engine.rules()[0]["kind"] == "error_rate"
    calls(recent, "up", 6, status=500)
    with capture_logs() as logs:
        engine.evaluate()
        clock.advance(61)
        engine.evaluate()
    assert [log["event"] for log in logs] == ["alert firing", "alert resolved"]
    assert logs[0]["rule"] == "errors" and logs[0]["model"] == "up"
    sample = registry.get_sample_value
    assert sample("shipway_alerts_total", {"rule": "errors", "state": "firing"}) == 1
    assert sample("shipway_alerts_total", {"rule": "errors", "state": "resolved"}) == 1


async def test_disabled_alerts_evaluate_nothing() -> None:
    clock = Clock()
    settings = AlertSettings.model_validate({"enabled": False})
    engine = AlertEngine(settings, RecentStats(60, clock=clock), {}, notifier=Recorder())
    assert engine.rules() == [] and engine.firing() == []
    await engine.start()
    await engine.stop()


async def test_the_task_evaluates_every_interval() -> None:
    import asyncio

    clock = Clock()
    settings = AlertSettings.model_validate(
        {"rules": [ERRORS], "default_rules": False, "evaluation_interval_s": 0.02}
    )
    recent = RecentStats(3600, clock=clock)
    recorder = Recorder()
    engine = AlertEngine(settings, recent, {}, notifier=recorder, clock=clock)
    calls(recent, "up", 6, status=500)
    await engine.start()
    for _ in range(100):
        if recorder.events:
            break
        await asyncio.sleep(0.01)
    await engine.stop()
    assert [e.status for e in recorder.events] == ["firing"]


def test_config_rejects_bad_rules_and_secret_urls() -> None:
    from shipway.errors import ConfigError

    bad = [
        ({"rules": [{"name": "x", "kind": "latncy"}]}, "`kind` must be one of"),
        ({"rules": [{"name": "x", "kind": "latency"}]}, "alerts.rules.0.threshold_s"),
        ({"rules": [ERRORS, ERRORS]}, "rule names must be unique: errors"),
        (
            {"webhooks": [{"name": "s", "format": "slack", "url": "https://hooks.example/T/B"}]},
            "a Slack webhook URL is a secret",
        ),
        ({"webhooks": [{"name": "g", "url": "http://h/x?token=1"}]}, "put the URL in `url_env`"),
        ({"webhooks": [{"name": "g"}]}, "exactly one of `url` and `url_env`"),
        ({"webhooks": [{"name": "g", "url_env": "https://x"}]}, "NAME of an environment"),
    ]
    for alerts, message in bad:
        with pytest.raises(ConfigError, match=message.replace("`", ".").replace("?", ".")):
            load_settings(None, {"alerts": alerts})


def test_rolling_sums_match_a_full_recount() -> None:
    """The incremental sums equal RecentStats' own window, whatever the evaluation rhythm."""
    import random

    from shipway.telemetry.alert_windows import RollingSums, Windows

    rng = random.Random(7)
    clock = Clock()
    recent = RecentStats(700, clock=clock)
    rolling: dict[float, RollingSums] = {}
    for step in range(400):
        for _ in range(rng.choice((0, 0, 1, 3))):
            model = rng.choice(("a", "b", "c"))
            status = rng.choice((200, 200, 200, 500, 429))
            recent.record(
                model,
                status=status,
                error_type=None if status == 200 else f"e{status}",
                latency_s=rng.uniform(0.01, 40),
                cost=rng.uniform(0, 0.01),
            )
        clock.advance(rng.choice((0.3, 1, 1, 2, 7)))
        if step % rng.choice((1, 2, 5)):
            continue
        windows = Windows(recent, 660, rolling)
        for span in (5.0, 60.0, 660.0):
            totals = windows.totals(span)
            for model in ("a", "b", "c"):
                expected = recent.window(span, model)
                got = totals.get(model)
                if got is None:
                    assert expected.requests == 0
                    continue
                assert (got.requests, got.errors) == (expected.requests, expected.errors)
                assert got.cost == pytest.approx(expected.cost, abs=1e-9)
                assert got.errors_by_type == expected.errors_by_type
                for q in (0.5, 0.95, 0.99):
                    assert got.latency_quantile(q) == expected.latency_quantile(q)
