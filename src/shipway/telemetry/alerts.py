"""The alert engine: evaluates the rules every `alerts.evaluation_interval_s`, in the process.

Each (rule, model) is its own alert (each (rule, team, model) for `cost_anomaly`, read from
the injected ``SpendHistory`` rather than ``RecentStats``), moving

    inactive ──condition holds──► pending ──held for `for_s`──► firing ──condition ends──► resolved
                                     └──────condition ends (no notification)──► inactive

An incident sends exactly one `firing` and one `resolved` notification, however many
evaluations it spans; each transition is logged (logger `shipway.alerts`) and counted in
`shipway_alerts_total{rule,state}`. The clock is injectable, and ``evaluate`` is synchronous,
so the state machine is tested without sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

import structlog
from prometheus_client import CollectorRegistry, Counter

from shipway.config import AlertRule, AlertSettings, CostAnomalyRule
from shipway.telemetry.alert_rules import Observation, effective_rules, longest_span, observe
from shipway.telemetry.alert_windows import RollingSums, Windows
from shipway.telemetry.cost_anomaly import observe_anomalies
from shipway.telemetry.recent import RecentStats
from shipway.telemetry.spend_history import SpendHistory
from shipway.telemetry.webhooks import AlertEvent, Notifier, WebhookNotifier

__all__ = ["AlertEngine"]

# One alert per (rule name, team, model); team and model are None where a rule has none.
_Key = tuple[str, str | None, str | None]


@dataclass(slots=True)
class _Alert:
    rule: AlertRule
    model: str | None
    pending_since: float
    last: Observation
    firing_since: float | None = None
    team: str | None = None

    def event(self, status: Literal["firing", "resolved"], at: float) -> AlertEvent:
        return AlertEvent(
            status=status,
            rule=self.rule.name,
            kind=self.rule.kind,
            severity=self.rule.severity,
            model=self.model,
            summary=self.last.summary,
            value=self.last.value,
            threshold=self.last.threshold,
            since=self.firing_since or at,
            at=at,
            team=self.team,
        )


class AlertEngine:
    def __init__(
        self,
        settings: AlertSettings,
        recent: RecentStats,
        secrets: Mapping[str, str],
        *,
        registry: CollectorRegistry | None = None,
        notifier: Notifier | None = None,
        clock: Callable[[], float] = time.time,
        spend: SpendHistory | None = None,
    ) -> None:
        self.settings = settings
        self._rules = effective_rules(settings) if settings.enabled else []
        self._history_s = longest_span(self._rules)
        self._rolling: dict[float, RollingSums] = {}
        self._recent = recent
        self._spend = spend
        self._notifier = notifier or WebhookNotifier(settings.webhooks, secrets)
        self._clock = clock
        self._alerts: dict[_Key, _Alert] = {}
        self._task: asyncio.Task[None] | None = None
        self._log = structlog.get_logger("shipway.alerts")
        self._counter = (
            None
            if registry is None
            else Counter(
                "shipway_alerts",
                "Alert transitions by rule and state (firing, resolved).",
                ["rule", "state"],
                registry=registry,
            )
        )

    async def start(self) -> None:
        if not self._rules:
            return
        await self._notifier.start()
        self._task = asyncio.create_task(self._run(), name="alert-engine")

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        await self._notifier.stop()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.evaluation_interval_s)
            try:
                self.evaluate()
            except Exception:  # noqa: BLE001 - a broken rule must not stop the others for good
                self._log.exception("alert evaluation failed")

    def evaluate(self) -> list[AlertEvent]:
        """One pass over every rule; returns (and notifies) the transitions it made."""
        now = self._clock()
        windows = Windows(self._recent, self._history_s, self._rolling)
        events: list[AlertEvent] = []
        breaching: set[_Key] = set()
        observed: set[_Key] = set()
        for rule in self._rules:
            for seen in self._observe(rule, windows):
                key = (rule.name, seen.team, seen.model)
                observed.add(key)
                alert = self._alerts.get(key)
                if alert is not None:
                    alert.last = seen
                if not seen.breaching:
                    continue
                breaching.add(key)
                if alert is None:
                    alert = self._alerts[key] = _Alert(rule, seen.model, now, seen, team=seen.team)
                if alert.firing_since is None and now - alert.pending_since >= rule.for_s:
                    alert.firing_since = now
                    events.append(alert.event("firing", now))
        for key in [k for k in self._alerts if k not in breaching]:
            alert = self._alerts.pop(key)
            if key not in observed:  # e.g. no calls left in the window
                who = f"team {alert.team} on " if alert.team else ""
                gone = f"{alert.rule.name}: nothing left to observe for {who}{alert.model or 'all'}"
                alert.last = replace(alert.last, summary=gone)
            if alert.firing_since is not None:
                events.append(alert.event("resolved", now))
        for event in events:
            self._announce(event)
        return events

    def _observe(self, rule: AlertRule, windows: Windows) -> list[Observation]:
        if isinstance(rule, CostAnomalyRule):
            return [] if self._spend is None else observe_anomalies(rule, self._spend)
        return observe(rule, windows)

    def announce(self, event: AlertEvent) -> None:
        """Log, count and notify one event raised outside the rules (a budget's soft limit)."""
        self._announce(event)

    def _announce(self, event: AlertEvent) -> None:
        log = self._log.warning if event.status == "firing" else self._log.info
        team = {} if event.team is None else {"team": event.team}
        log(
            f"alert {event.status}",
            rule=event.rule,
            severity=event.severity,
            **team,
            model=event.model,
            value=event.value,
            threshold=event.threshold,
            summary=event.summary,
        )
        if self._counter is not None:
            self._counter.labels(event.rule, event.status).inc()
        self._notifier.notify(event)

    def firing(self) -> list[dict[str, Any]]:
        """Alerts firing now, oldest first (what the dashboard shows)."""
        firing = [a for a in self._alerts.values() if a.firing_since is not None]
        firing.sort(key=lambda a: (a.firing_since or 0.0, a.rule.name, a.team or "", a.model or ""))
        return [
            {
                "rule": a.rule.name,
                "kind": a.rule.kind,
                "severity": a.rule.severity,
                "team": a.team,
                "model": a.model,
                "since": a.firing_since,
                "summary": a.last.summary,
                "value": a.last.value,
                "threshold": a.last.threshold,
            }
            for a in firing
        ]

    def rules(self) -> list[dict[str, Any]]:
        """The rules evaluated (defaults included), as their settings."""
        return [rule.model_dump() for rule in self._rules]
