"""The dashboard's one JSON document, built from plain data (pure functions, no I/O).

``build_summary`` takes what the route read from the running server: the window's buckets
(buckets.py, merged from ``RecentStats``), the engine's ``status()``, the latest gauges and the
firing alerts. ``shipway stats`` prints the same document, so page and terminal agree.

    {"server_time", "window_s", "history_s", "currency",
     "totals":  WindowSummary.to_dict() + cost_per_hour,
     "models":  [{"model", "state", "backend", "workers": {state: count}, "restarts",
                  "waiting", "max_waiting", "busy", "slots", …WindowSummary.to_dict()}],
     "series":  chart_series(…)   (see series.py),
     "alerts":  [{"rule", "severity", "model", "since", "summary", "value", "threshold"}]}

Everything covers the same completed seconds, ``[now - window, now)``: the cards and the
table agree with the charts, and the last point is never a half-filled second.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from shipway.dashboard.buckets import Bucket
from shipway.dashboard.series import chart_series
from shipway.telemetry.recent import SecondAggregate, summarize

__all__ = ["FiringAlerts", "build_summary", "model_rows"]


class FiringAlerts(Protocol):
    """What the dashboard needs of the alert engine: the alerts firing now."""

    def firing(self) -> list[dict[str, Any]]: ...


def build_summary(
    buckets: Sequence[Bucket],
    *,
    now: float,
    window_s: int,
    step: int,
    engine_status: Mapping[str, Mapping[str, Any]],
    gauges: Mapping[str, float],
    alerts: Sequence[Mapping[str, Any]],
    currency: str,
    history_s: int,
) -> dict[str, Any]:
    merged = [bucket.merged for bucket in buckets if bucket.merged is not None]
    totals = summarize(merged, window_s)
    models = sorted({*engine_status, *(m for s in merged for m in s.models)})
    return {
        "server_time": now,
        "window_s": window_s,
        "history_s": history_s,
        "currency": currency,
        "totals": {**totals.to_dict(), "cost_per_hour": round(totals.cost_per_hour, 6)},
        "models": model_rows(merged, window_s, models, engine_status, gauges),
        "series": chart_series(buckets, models, step),
        "alerts": [dict(alert) for alert in alerts],
    }


def model_rows(
    seconds: Sequence[SecondAggregate],
    window_s: int,
    models: Sequence[str],
    engine_status: Mapping[str, Mapping[str, Any]],
    gauges: Mapping[str, float],
) -> list[dict[str, Any]]:
    """One row per model: its traffic over the window and its state now. A name the engine
    does not serve (``(unknown)``: requests for models that do not exist) has traffic only."""
    rows = []
    for model in models:
        status = engine_status.get(model, {})
        row: dict[str, Any] = {
            "model": model,
            "state": status.get("state", "-"),
            "ready": status.get("ready"),
            "backend": status.get("backend", "-"),
            "workers": _worker_states(status),
            "restarts": sum(int(w.get("restarts", 0)) for w in status.get("workers", ())),
            "waiting": gauges.get(f"{model}.waiting"),
            "max_waiting": gauges.get(f"{model}.max_waiting"),
            "busy": gauges.get(f"{model}.busy"),
            "slots": gauges.get(f"{model}.slots"),
        }
        row.update(summarize(seconds, window_s, model).to_dict())
        rows.append(row)
    return rows


def _worker_states(status: Mapping[str, Any]) -> dict[str, int]:
    """``{"idle": 1, "busy": 1}`` for worker processes; upstream models have none."""
    counts: dict[str, int] = {}
    for worker in status.get("workers", ()):
        state = str(worker.get("state", "unknown"))
        counts[state] = counts.get(state, 0) + 1
    return counts
