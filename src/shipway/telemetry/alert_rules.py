"""What each alert rule sees: its condition evaluated over ``RecentStats``, and the defaults.

``observe(rule, windows)`` returns one ``Observation`` per model (or one for the total) with
the value, the threshold and whether the condition holds now; the alert engine turns those
into pending, firing and resolved. Rules are pure functions of the recent history: time only
enters through the history's own clock.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from shipway.config import (
    AlertRule,
    AlertSettings,
    CostAnomalyRule,
    CostRateRule,
    ErrorRateRule,
    LatencyRule,
    ModelUnavailableRule,
    QueueSaturationRule,
)
from shipway.telemetry.alert_windows import Windows

__all__ = [
    "DEFAULT_RULES",
    "Observation",
    "effective_rules",
    "longest_span",
    "observe",
    "span_text",
]

DEFAULT_RULES: tuple[AlertRule, ...] = (
    LatencyRule(kind="latency", name="latency_p95", quantile=0.95, threshold_s=30.0),
    LatencyRule(
        kind="latency", name="latency_p99", quantile=0.99, threshold_s=60.0, min_requests=100
    ),
    ErrorRateRule(kind="error_rate", name="error_rate", severity="critical"),
    ModelUnavailableRule(kind="model_unavailable", name="model_unavailable"),
    QueueSaturationRule(kind="queue_saturation", name="queue_saturation"),
    # Quieter than the kind's defaults: business-hours traffic runs at about 3x its daily
    # mean every morning, so this asks for 5x held 5 minutes (a runaway loop, a leaked key).
    CostAnomalyRule(kind="cost_anomaly", name="cost_anomaly", factor=5.0, for_s=300.0),
)


def effective_rules(settings: AlertSettings) -> list[AlertRule]:
    """The configured rules, after the defaults (unless turned off) they do not replace."""
    own = {rule.name for rule in settings.rules}
    defaults = [r for r in DEFAULT_RULES if r.name not in own] if settings.default_rules else []
    return [*defaults, *settings.rules]


@dataclass(frozen=True, slots=True)
class Observation:
    model: str | None
    value: float
    threshold: float
    breaching: bool
    summary: str
    team: str | None = None  # per-team rules only


def longest_span(rules: Iterable[AlertRule]) -> float:
    """The history one evaluation of these rules reads."""
    spans = [1.0]
    for rule in rules:
        if isinstance(rule, ErrorRateRule):
            spans.append(rule.window_s + rule.baseline_window_s)
        elif isinstance(rule, LatencyRule | CostRateRule):
            spans.append(rule.window_s)
    return max(spans)


def observe(rule: AlertRule, windows: Windows) -> list[Observation]:
    if isinstance(rule, LatencyRule):
        return [_latency(rule, windows, m) for m in windows.models(rule.window_s, rule.models)]
    if isinstance(rule, ErrorRateRule):
        return [_errors(rule, windows, m) for m in windows.models(rule.window_s, rule.models)]
    if isinstance(rule, ModelUnavailableRule):
        return [_unavailable(windows, m) for m in windows.gauge_models(rule.models)]
    if isinstance(rule, QueueSaturationRule):
        return list(_saturation(rule, windows))
    if isinstance(rule, CostRateRule):
        return _cost(rule, windows)
    return []  # cost_anomaly reads the spend history, not these windows (cost_anomaly.py)


def _latency(rule: LatencyRule, windows: Windows, model: str) -> Observation:
    calls = windows.totals(rule.window_s)[model].requests
    name, span = f"p{rule.quantile * 100:g} latency of {model}", span_text(rule.window_s)
    if calls < rule.min_requests:
        text = f"{name}: {calls} calls over the last {span}, too few to judge"
        return Observation(model, 0.0, rule.threshold_s, False, text)
    value = windows.totals(rule.window_s)[model].latency_quantile(rule.quantile) or 0.0
    text = (
        f"{name} is {value:.3g} s over the last {span} ({calls} calls; SLA {rule.threshold_s:g} s)"
    )
    return Observation(model, value, rule.threshold_s, value > rule.threshold_s, text)


def _errors(rule: ErrorRateRule, windows: Windows, model: str) -> Observation:
    now = windows.totals(rule.window_s)[model]
    both = windows.totals(rule.window_s + rule.baseline_window_s)[model]
    before_requests, before_errors = both.requests - now.requests, both.errors - now.errors
    baseline = before_errors / before_requests if before_requests >= rule.min_requests else 0.0
    threshold = min(max(rule.threshold, rule.baseline_factor * baseline), rule.ceiling)
    rate = now.errors / now.requests if now.requests else 0.0
    kinds = "none"
    if now.errors:
        top = sorted(now.errors_by_type.items(), key=lambda kv: -kv[1])[:3]
        kinds = ", ".join(f"{kind} x{count}" for kind, count in top)
    text = (
        f"error rate of {model} is {rate:.1%} over the last {span_text(rule.window_s)} "
        f"({now.errors}/{now.requests} calls; threshold {threshold:.1%}, baseline "
        f"{baseline:.1%}); errors: {kinds}"
    )
    breaching = now.requests >= rule.min_requests and rate > threshold
    return Observation(model, rate, threshold, breaching, text)


def _unavailable(windows: Windows, model: str) -> Observation:
    ready = windows.gauges.get(f"{model}.ready", 1.0)
    state = "ready" if ready else "not ready: no worker has the model loaded (see /readyz)"
    return Observation(model, ready, 1.0, not ready, f"model {model} is {state}")


def _saturation(rule: QueueSaturationRule, windows: Windows) -> Iterable[Observation]:
    for model in windows.gauge_models(rule.models):
        waiting = windows.gauges.get(f"{model}.waiting", 0.0)
        most = windows.gauges.get(f"{model}.max_waiting", 0.0)
        if most <= 0:
            continue  # no queue at all: every request beyond the slots is refused
        share = waiting / most
        text = (
            f"queue of {model} is {waiting:g}/{most:g} full ({share:.0%}; "
            f"threshold {rule.threshold:.0%}): new requests will soon get 429"
        )
        yield Observation(model, share, rule.threshold, share >= rule.threshold, text)


def _cost(rule: CostRateRule, windows: Windows) -> list[Observation]:
    models = windows.models(rule.window_s, rule.models)
    groups: list[tuple[str | None, list[str] | None]]
    if rule.per_model:
        groups = [(m, [m]) for m in models]
    else:
        groups = [(None, None if rule.models is None else models)]  # None: every model
    out = []
    totals = windows.totals(rule.window_s)
    for model, members in groups:
        spent = sum(t.cost for m, t in totals.items() if members is None or m in members)
        per_hour = spent / rule.window_s * 3600
        who = f"of {model}" if model else "of all models"
        text = (
            f"spend {who} is {per_hour:.4g} per hour over the last {span_text(rule.window_s)} "
            f"(threshold {rule.threshold_per_hour:g} per hour)"
        )
        out.append(
            Observation(
                model, per_hour, rule.threshold_per_hour, per_hour > rule.threshold_per_hour, text
            )
        )
    return out


def span_text(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"
