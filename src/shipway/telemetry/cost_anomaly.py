"""The `cost_anomaly` rule: each (team, model)'s recent spend rate against its own baseline.

The baseline is the mean spend rate over `baseline_window_s` before the recent window, so
a team that always spends a lot is not an anomaly and one that never spends is one when it
starts. The threshold is max(`factor` x baseline, `min_spend_per_hour`): a key whose baseline
is a few cents does not fire on a few cents more. A key with less than `min_baseline_s` of
history before the window (after a restart: the history lives in memory) is not judged.
Not in `shipway alerts export`: the Prometheus metrics carry no team label.
"""

from __future__ import annotations

from shipway.config import AlertSettings, CostAnomalyRule
from shipway.telemetry.alert_rules import Observation, effective_rules, span_text
from shipway.telemetry.spend_history import SpendHistory, SpendRates

__all__ = ["NO_TEAM", "observe_anomalies", "spend_history_span"]

# The team label of calls whose key belongs to no team.
NO_TEAM = "(no team)"


def spend_history_span(settings: AlertSettings) -> float:
    """How much spend history the `cost_anomaly` rules read (an hour at least)."""
    rules = effective_rules(settings) if settings.enabled else []
    spans = [r.window_s + r.baseline_window_s for r in rules if isinstance(r, CostAnomalyRule)]
    return max([3600.0, *spans])


def observe_anomalies(rule: CostAnomalyRule, history: SpendHistory) -> list[Observation]:
    out = []
    for rates in history.rates(rule.window_s, rule.baseline_window_s):
        team = NO_TEAM if rates.team is None else rates.team
        if rule.models is not None and rates.model not in rule.models:
            continue
        if rule.teams is not None and team not in rule.teams:
            continue
        out.append(_judge(rule, team, rates))
    return out


def _judge(rule: CostAnomalyRule, team: str, rates: SpendRates) -> Observation:
    now, base = rates.recent_per_hour, rates.baseline_per_hour
    who = f"spend of team {team} on {rates.model}"
    recent = f"{now:.4g} per hour over the last {span_text(rule.window_s)}"
    if rates.baseline_s < rule.min_baseline_s:
        text = f"{who} is {recent}; too little history before it to judge"
        return Observation(rates.model, now, rule.min_spend_per_hour, False, text, team)
    threshold = max(rule.factor * base, rule.min_spend_per_hour)
    span = span_text(round(rates.baseline_s))
    usual = f"with no spend in the {span} before"
    if base:
        usual = f"{now / base:.1f}x its baseline of {base:.4g} per hour over the {span} before"
    text = f"{who} is {recent}, {usual} (threshold {threshold:.4g} per hour)"
    return Observation(rates.model, now, threshold, now > threshold, text, team)
