"""Cost anomalies: spend per (team, model) against its own rolling baseline, with a fake clock."""

from __future__ import annotations

import random
from typing import Any

import pytest
from aiohttp import web

from shipway.config import AlertSettings, CostAnomalyRule, WebhookSettings, load_settings
from shipway.errors import ConfigError
from shipway.telemetry.alert_export import prometheus_rules
from shipway.telemetry.alert_rules import effective_rules
from shipway.telemetry.alerts import AlertEngine
from shipway.telemetry.cost_anomaly import observe_anomalies, spend_history_span
from shipway.telemetry.recent import RecentStats
from shipway.telemetry.spend_history import SpendHistory
from shipway.telemetry.webhooks import AlertEvent, WebhookNotifier

START = 1_699_999_980.0  # a whole minute


class Clock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


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


RULE: dict[str, Any] = {
    "name": "spend_spike",
    "kind": "cost_anomaly",
    "window_s": 300,
    "baseline_window_s": 3600,
    "factor": 3,
    "min_spend_per_hour": 1.0,
    "for_s": 60,
}


Rates = dict[tuple[str | None, str], float]  # (team, model) -> spend per hour


def make(
    clock: Clock, rule: dict[str, Any] | None = None, **alerts: Any
) -> tuple[AlertEngine, SpendHistory, Recorder]:
    settings = AlertSettings.model_validate(
        {"rules": [rule or RULE], "default_rules": False, **alerts}
    )
    history = SpendHistory(spend_history_span(settings), clock=clock)
    recorder = Recorder()
    engine = AlertEngine(
        settings, RecentStats(60, clock=clock), {}, notifier=recorder, clock=clock, spend=history
    )
    return engine, history, recorder


def run(
    engine: AlertEngine,
    history: SpendHistory,
    clock: Clock,
    seconds: int,
    per_hour: Rates,
) -> list[AlertEvent]:
    """Spend at these rates (a call every 10 s per key), evaluating every 10 s."""
    events = []
    for _ in range(seconds // 10):
        for (team, model), rate in per_hour.items():
            history.record(team, model, rate / 360)
        events += engine.evaluate()
        clock.now += 10
    return events


STEADY: Rates = {("a", "gpt"): 6.0, ("b", "gpt"): 12.0, (None, "gpt"): 3.0}


def test_steady_spend_over_the_baseline_span_never_fires() -> None:
    clock = Clock()
    engine, history, recorder = make(clock)
    assert run(engine, history, clock, 3 * 3600, STEADY) == []
    assert recorder.events == [] and engine.firing() == []


def test_a_spike_fires_once_for_its_team_and_model_and_resolves_once() -> None:
    clock = Clock()
    engine, history, recorder = make(clock)
    assert run(engine, history, clock, 3600 + 600, STEADY) == []
    spike = {**STEADY, ("a", "gpt"): 60.0}  # 10x for team a, 5 minutes; b goes on as usual
    [firing] = run(engine, history, clock, 300, spike)
    assert (firing.status, firing.rule, firing.kind) == ("firing", "spend_spike", "cost_anomaly")
    assert (firing.team, firing.model) == ("a", "gpt")
    assert firing.threshold == pytest.approx(18.0, rel=0.02)  # 3 x its usual 6 per hour
    assert firing.value > firing.threshold
    assert "team a on gpt" in firing.summary and "baseline of 6 per hour" in firing.summary
    [shown] = engine.firing()
    assert (shown["team"], shown["model"], shown["since"]) == ("a", "gpt", firing.since)
    [resolved] = run(engine, history, clock, 900, STEADY)
    assert (resolved.status, resolved.team, resolved.since) == ("resolved", "a", firing.since)
    assert run(engine, history, clock, 1800, STEADY) == []
    assert [(e.status, e.team, e.model) for e in recorder.events] == [
        ("firing", "a", "gpt"),
        ("resolved", "a", "gpt"),
    ]


def test_keys_without_a_team_are_labelled_and_teams_filter() -> None:
    clock = Clock()
    engine, history, _ = make(clock, {**RULE, "for_s": 0})
    run(engine, history, clock, 3900, STEADY)
    [event] = run(engine, history, clock, 300, {**STEADY, (None, "gpt"): 50.0})
    assert (event.team, event.model) == ("(no team)", "gpt")
    only_b = CostAnomalyRule.model_validate({**RULE, "teams": ["b"]})
    assert [o.team for o in observe_anomalies(only_b, history)] == ["b"]


def test_spend_below_the_floor_never_fires() -> None:
    clock = Clock()
    engine, history, _ = make(clock, {**RULE, "for_s": 0})
    cents: Rates = {("a", "gpt"): 0.01}
    assert run(engine, history, clock, 3900, cents) == []
    assert run(engine, history, clock, 600, {("a", "gpt"): 0.5}) == []  # 50x, yet 0.5 per hour
    [seen] = observe_anomalies(CostAnomalyRule.model_validate(RULE), history)
    assert seen.value > 3 * 0.01 and seen.threshold == 1.0 and not seen.breaching


def test_too_little_history_judges_nothing() -> None:
    """After a start the baseline is unknown, not zero: an hour passes before a spike fires."""
    clock = Clock()
    engine, history, _ = make(clock, {**RULE, "for_s": 0})
    assert run(engine, history, clock, 3000, {("a", "gpt"): 50.0}) == []
    clock.now = START + 3 * 3600  # a team first seen after that is judged from nothing
    [event] = run(engine, history, clock, 120, {("new", "gpt"): 50.0})
    assert event.team == "new" and "with no spend in the 1 h before" in event.summary


async def test_the_alert_reaches_a_webhook_with_team_and_model() -> None:
    seen: list[Any] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(await request.json())
        return web.Response()

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        clock = Clock()
        hook = {"name": "ops", "url": f"http://127.0.0.1:{port}/hook"}
        settings = AlertSettings.model_validate(
            {"rules": [{**RULE, "for_s": 0}], "default_rules": False, "webhooks": [hook]}
        )
        history = SpendHistory(spend_history_span(settings), clock=clock)
        notifier = WebhookNotifier([WebhookSettings.model_validate(hook)], {}, instance="n1")
        recent = RecentStats(60, clock=clock)
        engine = AlertEngine(settings, recent, {}, notifier=notifier, clock=clock, spend=history)
        await engine.start()
        run(engine, history, clock, 3900, STEADY)
        run(engine, history, clock, 300, {**STEADY, ("b", "gpt"): 120.0})
        await engine.stop()  # lets the queued notification go out
    finally:
        await runner.cleanup()
    [body] = seen
    assert (body["status"], body["team"], body["model"]) == ("firing", "b", "gpt")
    assert body["fingerprint"] == "spend_spike/b/gpt" and body["kind"] == "cost_anomaly"


def test_the_history_bounds_its_keys_dropping_the_idlest() -> None:
    clock = Clock()
    history = SpendHistory(3600, max_keys=3, clock=clock)
    clock.now += 600
    for n in range(3):
        history.record(f"t{n}", "m", 1.0)
        clock.now += 60
    history.record("t0", "m", 1.0)  # t0 is busy again: t1 is now the idlest
    history.record("t3", "m", 1.0)
    history.record("t4", "m", 1.0)
    assert len(history) == 3
    assert {(r.team, r.model) for r in history.rates(300, 3600)} == {
        ("t0", "m"),
        ("t3", "m"),
        ("t4", "m"),
    }
    # t0 was first seen after the history began: it spent nothing before, a known baseline.
    t0 = next(r for r in history.rates(60, 3600) if r.team == "t0")
    assert t0.baseline_s == 600 + 180
    # t1 had spend in the history when it went: a key arriving now may be it coming back, so
    # its baseline is unknown (not zero) rather than a spike out of nothing.
    history.record("t1", "m", 5.0)
    t1 = next(r for r in history.rates(60, 3600) if r.team == "t1")
    assert t1.baseline_s == 0


def test_rates_match_a_full_recount() -> None:
    """Cumulative arrays, pruning and compaction against a brute-force sum of every call."""
    rng = random.Random(11)
    clock = Clock(START + 17)
    history = SpendHistory(7200, clock=clock)
    calls: list[tuple[int, str, float]] = []
    for step in range(4000):
        for _ in range(rng.choice((0, 1, 1, 3))):
            team, cost = rng.choice("xyz"), rng.uniform(0.001, 0.2)
            history.record(team, "m", cost)
            calls.append((int(clock.now // 60), team, cost))
        clock.now += rng.choice((1, 5, 10, 30, 200))
        if step % 37:
            continue
        minute = int(clock.now // 60)
        window_s, baseline_s = rng.choice(((300, 3600), (60, 7200), (600, 1800)))
        recent_start = minute - window_s // 60 + 1
        kept = minute - 7200 // 60 + 1
        base_start = max(recent_start - baseline_s // 60, kept)
        for rates in history.rates(window_s, baseline_s):
            mine = [(m, c) for m, t, c in calls if t == rates.team]
            recent = sum(c for m, c in mine if m >= recent_start)
            baseline = sum(c for m, c in mine if base_start <= m < recent_start)
            assert rates.recent == pytest.approx(recent, abs=1e-9)
            assert rates.baseline == pytest.approx(baseline, abs=1e-9)


def test_config_checks_and_the_default_rule() -> None:
    for bad, message in (
        ({"min_baseline_s": 7200}, "min_baseline_s. must be at most"),
        ({"window_s": 90}, "multiple of 60"),
        ({"factor": 1}, "greater than 1"),
    ):
        with pytest.raises(ConfigError, match=message):
            load_settings(None, {"alerts": {"rules": [{**RULE, **bad}]}})
    with pytest.raises(ConfigError, match="cost_anomaly"):
        load_settings(None, {"alerts": {"rules": [{**RULE, "kind": "cost_anomly"}]}})
    settings = load_settings(None, {}).alerts
    [default] = [r for r in effective_rules(settings) if isinstance(r, CostAnomalyRule)]
    assert (default.name, default.factor, default.min_spend_per_hour) == ("cost_anomaly", 5, 1)
    assert spend_history_span(settings) == 86400 + 300


def test_the_prometheus_export_leaves_it_out() -> None:
    settings = load_settings(None, {"alerts": {"rules": [RULE]}})
    names = [r["alert"] for r in prometheus_rules(settings)["groups"][0]["rules"]]
    assert "spend_spike" not in names and "cost_anomaly" not in names
    assert "error_rate" in names
