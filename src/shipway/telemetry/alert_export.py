"""The alert rules as a Prometheus alerting-rules file (`shipway alerts export`).

The same rules the process evaluates (defaults included), written in PromQL over Shipway's
own metrics, for teams that run Prometheus and Alertmanager over a fleet of replicas:

    latency            histogram_quantile over shipway_request_duration_seconds_bucket
    error_rate         shipway_requests_total with status 4xx/5xx (not 499), against the
                       baseline window before it (`offset`), clamped to [threshold, ceiling]
    model_unavailable  shipway_model_ready == 0
    queue_saturation   shipway_queue_depth over the model's queue.max_waiting (from the config)
    cost_rate          rate(shipway_cost_total) x 3600
    cost_anomaly       left out: it is per team, and no metric carries a team label (one
                       would multiply every series by the number of teams)

Every expression keeps the `model` label (but for a total cost rule) and leaves out
`model="(unknown)"`, the label of requests for models nobody serves.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml

from shipway.config import (
    AlertRule,
    CostAnomalyRule,
    CostRateRule,
    ErrorRateRule,
    LatencyRule,
    ModelUnavailableRule,
    ShipwaySettings,
)
from shipway.telemetry.alert_rules import effective_rules

__all__ = ["export_yaml", "prometheus_rules"]

_ERROR_STATUS = 'status=~"4..|5..",status!="499"'
_REGEX_SPECIAL = set("\\.^$|?*+()[]{}")


def prometheus_rules(settings: ShipwaySettings) -> dict[str, Any]:
    """``{"groups": [...]}``: one group, one alerting rule per Shipway rule."""
    alerts = settings.alerts
    rules = []
    for rule in effective_rules(alerts) if alerts.enabled else []:
        expr = _expr(rule, settings)
        if expr is None:
            continue  # queue saturation where no model has a queue; cost anomaly (per team)
        entry: dict[str, Any] = {"alert": rule.name, "expr": expr}
        if rule.for_s:
            entry["for"] = _duration(rule.for_s)
        entry["labels"] = {"severity": rule.severity, "kind": rule.kind}
        entry["annotations"] = _annotations(rule)
        rules.append(entry)
    interval = _duration(alerts.evaluation_interval_s)
    return {"groups": [{"name": "shipway", "interval": interval, "rules": rules}]}


def export_yaml(settings: ShipwaySettings, source: str | None = None) -> str:
    head = (
        f"# Prometheus alerting rules from Shipway's alert rules ({source or 'defaults'}),\n"
        "# written by `shipway alerts export`; load them with `rule_files:`.\n"
    )
    body = yaml.safe_dump(prometheus_rules(settings), sort_keys=False, width=10_000)
    return head + body


def _expr(rule: AlertRule, settings: ShipwaySettings) -> str | None:
    m = _matchers(rule.models)
    if isinstance(rule, LatencyRule):
        window = _duration(rule.window_s)
        buckets = f"rate(shipway_request_duration_seconds_bucket{{{m}}}[{window}])"
        calls = f"increase(shipway_request_duration_seconds_count{{{m}}}[{window}])"
        return (
            f"histogram_quantile({rule.quantile:g}, sum by (model, le) ({buckets})) "
            f"> {rule.threshold_s:g} "
            f"and on (model) sum by (model) ({calls}) >= {rule.min_requests}"
        )
    if isinstance(rule, ErrorRateRule):
        return _error_rate(rule, m)
    if isinstance(rule, ModelUnavailableRule):
        return f"shipway_model_ready{{{m}}} == 0"
    if isinstance(rule, CostRateRule):
        by = "sum by (model)" if rule.per_model else "sum"
        spend = f"rate(shipway_cost_total{{{m}}}[{_duration(rule.window_s)}])"
        return f"{by} ({spend}) * 3600 > {rule.threshold_per_hour:g}"
    if isinstance(rule, CostAnomalyRule):
        return None  # per team: Shipway's metrics have no team label to compute it from
    limits: dict[int, list[str]] = {}
    for alias, model in settings.models.items():
        most = model.queue.resolve(settings.queue).max_waiting
        if most > 0 and (rule.models is None or alias in rule.models):
            limits.setdefault(most, []).append(alias)
    parts = [
        f"shipway_queue_depth{{{_matchers(aliases)}}} / {most} >= {rule.threshold:g}"
        for most, aliases in sorted(limits.items())
    ]
    return " or ".join(f"({part})" for part in parts) if parts else None


def _error_rate(rule: ErrorRateRule, m: str) -> str:
    window, base = _duration(rule.window_s), _duration(rule.baseline_window_s)
    total = f"sum by (model) (rate(shipway_requests_total{{{m}}}[{window}]))"
    failed = f"shipway_requests_total{{{m},{_ERROR_STATUS}}}"
    errors = f"sum by (model) (rate({failed}[{window}]))"
    calls = f"sum by (model) (increase(shipway_requests_total{{{m}}}[{window}]))"
    floor = f"{rule.threshold:g}"
    if rule.baseline_factor:
        before = f"[{base}] offset {window}"
        failed = f"shipway_requests_total{{{m},{_ERROR_STATUS}}}"
        base_errors = f"sum by (model) (increase({failed}{before}))"
        base_total = f"sum by (model) (increase(shipway_requests_total{{{m}}}{before}))"
        baseline = f"{base_errors} / ({base_total} >= {rule.min_requests})"
        limit = (
            f"(clamp_max(clamp_min({rule.baseline_factor:g} * {baseline}, {floor}), "
            f"{rule.ceiling:g}) or on (model) (0 * {total} + {floor}))"
        )
    else:
        limit = f"{min(rule.threshold, rule.ceiling):g}"
    compare = "> on (model)" if rule.baseline_factor else ">"
    return f"({errors} / {total}) {compare} {limit} and on (model) {calls} >= {rule.min_requests}"


def _annotations(rule: AlertRule) -> dict[str, str]:
    model = "{{ $labels.model }}"
    if isinstance(rule, LatencyRule):
        summary = (
            f"p{rule.quantile * 100:g} latency of {model} is {{{{ $value | humanizeDuration }}}} "
            f"over {_duration(rule.window_s)} (SLA {rule.threshold_s:g}s)"
        )
    elif isinstance(rule, ErrorRateRule):
        summary = (
            f"error rate of {model} is {{{{ $value | humanizePercentage }}}} "
            f"over {_duration(rule.window_s)}"
        )
    elif isinstance(rule, ModelUnavailableRule):
        summary = f"model {model} is not ready: no worker has it loaded (see /readyz)"
    elif isinstance(rule, CostRateRule):
        who = model if rule.per_model else "all models"
        summary = f"spend of {who} is {{{{ $value | humanize }}}} per hour"
    else:
        summary = f"queue of {model} is {{{{ $value | humanizePercentage }}}} full"
    return {"summary": summary, "description": f"Shipway alert rule `{rule.name}` ({rule.kind})."}


def _matchers(models: Iterable[str] | None) -> str:
    parts = ['model!="(unknown)"']
    if models is not None:
        pattern = "|".join(_regex_literal(alias) for alias in models)
        parts.append(f"model=~{_quote(pattern)}")
    return ",".join(parts)


def _regex_literal(text: str) -> str:
    return "".join("\\" + c if c in _REGEX_SPECIAL else c for c in text)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _duration(seconds: float) -> str:
    ms = max(1, round(seconds * 1000))
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"
