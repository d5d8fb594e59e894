"""Chart series: one value per bucket (buckets.py), as parallel lists indexed like ``t``.

A bucket with no second recorded at all (the server was not running) is ``None``, drawn as a
gap; a second recorded with no call in it counts as zero. Rates are per second of the
bucket's span; latency points are percentiles of the calls that finished in the bucket.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shipway.dashboard.buckets import Bucket
from shipway.telemetry.recent import summarize

__all__ = ["chart_series"]


def chart_series(buckets: Sequence[Bucket], models: Sequence[str], step: int) -> dict[str, Any]:
    """``{"step_s", "t", "requests_per_s", "errors_per_s": {type: […]}, "latency_s": {p50,
    p95, p99}, "ttft_s": {p50, p95}, "tokens_per_s": {prompt, completion}, "cost_cumulative",
    "queue_waiting": {model: […]}, "busy_slots": {model: […]}}``."""
    points = [_point(bucket) for bucket in buckets]
    error_types = sorted({kind for p in points if p is not None for kind in p["errors_per_s"]})
    cost, cumulative = 0.0, []
    for p in points:
        cost += p["cost"] if p is not None else 0.0
        cumulative.append(round(cost, 8) if p is not None else None)

    def column(*path: str) -> list[Any]:
        out = []
        for p in points:
            value: Any = p
            for key in path:
                value = None if value is None else value.get(key)
            out.append(value)
        return out

    def zero_when_recorded(*path: str) -> list[Any]:
        return [None if p is None else (v or 0) for p, v in zip(points, column(*path), strict=True)]

    return {
        "step_s": step,
        "t": [bucket.start for bucket in buckets],
        "requests_per_s": column("requests_per_s"),
        "errors_per_s": {kind: zero_when_recorded("errors_per_s", kind) for kind in error_types},
        "latency_s": {q: column("latency", q) for q in ("p50", "p95", "p99")},
        "ttft_s": {q: column("ttft", q) for q in ("p50", "p95")},
        "tokens_per_s": {kind: column("tokens_per_s", kind) for kind in ("prompt", "completion")},
        "cost_cumulative": cumulative,
        "queue_waiting": {model: column("waiting", model) for model in models},
        "busy_slots": {model: column("busy", model) for model in models},
    }


def _point(bucket: Bucket) -> dict[str, Any] | None:
    """The bucket's chart values, computed once (a cached bucket keeps them)."""
    if bucket.merged is None:
        return None
    if bucket.point is None:
        merged, span = bucket.merged, bucket.span
        window = summarize([merged], span)
        gauges = merged.gauges
        bucket.point = {
            "requests_per_s": _rate(window.requests, span),
            "errors_per_s": {k: _rate(n, span) for k, n in window.errors_by_type.items()},
            "latency": {
                "p50": window.latency_quantile(0.5),
                "p95": window.latency_quantile(0.95),
                "p99": window.latency_quantile(0.99),
            },
            "ttft": {"p50": window.ttft_quantile(0.5), "p95": window.ttft_quantile(0.95)},
            "tokens_per_s": {
                "prompt": _rate(window.prompt_tokens, span),
                "completion": _rate(window.completion_tokens, span),
            },
            "cost": window.cost,
            "waiting": _per_model(gauges, ".waiting"),
            "busy": _per_model(gauges, ".busy"),
        }
    return bucket.point


def _per_model(gauges: dict[str, float], suffix: str) -> dict[str, float]:
    return {name.removesuffix(suffix): v for name, v in gauges.items() if name.endswith(suffix)}


def _rate(count: float, span: int) -> float:
    return round(count / span, 4) if span > 0 else 0.0
