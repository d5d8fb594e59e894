"""The numbers of a ``shipway chaos run``: outcomes and /metrics deltas into one report.

The retries, fallbacks and breaker transitions come from the server's own Prometheus counters,
read before and after the run (the difference, so earlier traffic does not count). A server
without a counter, or a /metrics this run may not read, shows n.a., never a made-up 0.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
import numpy as np
import orjson
from prometheus_client.parser import text_string_to_metric_families

if TYPE_CHECKING:
    from shipway.ops.chaos_run import Outcome

__all__ = ["WATCHED", "Metrics", "render", "scrape", "summarize"]

# Report key -> (Prometheus sample name, its labels in the order the report shows them).
WATCHED: dict[str, tuple[str, tuple[str, ...]]] = {
    "retries": ("shipway_retries_total", ("model", "reason")),
    "fallbacks": ("shipway_fallbacks_total", ("from_model", "to_model", "reason")),
    "breaker_transitions": (
        "shipway_breaker_transitions_total",
        ("model", "from_state", "to_state"),
    ),
}
Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Metrics:
    """Counter samples by (name, labels); ``present``: the counters the server exposes."""

    samples: dict[tuple[str, Labels], float] = field(default_factory=dict)
    present: frozenset[str] = frozenset()
    note: str = "ok"

    def delta(self, after: Metrics) -> Metrics:
        if self.note != "ok" or after.note != "ok":
            return Metrics(note=after.note if after.note != "ok" else self.note)
        keys = after.samples.keys() | self.samples.keys()
        diff = {k: after.samples.get(k, 0.0) - self.samples.get(k, 0.0) for k in keys}
        return Metrics({k: v for k, v in diff.items() if v}, after.present, "ok")


async def scrape(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> Metrics:
    """Read the watched counters from ``url``/metrics. Raises ``aiohttp.ClientConnectionError``
    when nothing answers there (the run cannot happen); any other failure is a note."""
    names = {name for name, _ in WATCHED.values()}
    async with session.get(url + "/metrics", headers=headers) as response:
        if response.status != 200:
            return Metrics(note=f"/metrics answered {response.status}")
        text = await response.text()
    samples: dict[tuple[str, Labels], float] = {}
    present: set[str] = set()
    try:
        for family in text_string_to_metric_families(text):
            present.update({family.name, family.name + "_total"} & names)
            for sample in family.samples:
                if sample.name in names:
                    labels = tuple(sorted(sample.labels.items()))
                    samples[(sample.name, labels)] = float(sample.value)
    except ValueError as exc:
        return Metrics(note=f"/metrics is not Prometheus text: {exc}")
    return Metrics(samples, frozenset(present))


def _counter_report(metrics: Metrics, name: str, labels: tuple[str, ...]) -> dict[str, Any] | None:
    if metrics.note != "ok" or name not in metrics.present:
        return None
    rows: list[dict[str, Any]] = [
        {**{key: dict(sample_labels).get(key, "") for key in labels}, "count": int(value)}
        for (sample_name, sample_labels), value in metrics.samples.items()
        if sample_name == name
    ]
    rows.sort(key=lambda row: -row["count"])
    return {"total": sum(row["count"] for row in rows), "by": rows}


def summarize(
    url: str,
    model: str,
    planned: int,
    outcomes: Sequence[Outcome],
    metrics: Metrics,
    elapsed_s: float,
) -> dict[str, Any]:
    """The report as one JSON-ready document (the table view shows the same fields)."""
    sent = len(outcomes)
    ok = sum(o.ok for o in outcomes)
    errors = Counter((o.status, o.code) for o in outcomes if not o.ok)
    served = Counter((o.served_by, o.model) for o in outcomes if o.ok)
    latency = None
    if outcomes:
        ms = np.array([o.latency_s * 1000 for o in outcomes])
        points = dict(zip(("p50", "p90", "p99"), np.percentile(ms, [50, 90, 99]), strict=True))
        latency = {k: round(float(v), 2) for k, v in {**points, "max": ms.max()}.items()}
    report: dict[str, Any] = {
        "url": url,
        "model": model,
        "planned": planned,
        "sent": sent,
        "streamed": sum(o.streamed for o in outcomes),
        "elapsed_s": round(elapsed_s, 3),
        "succeeded": ok,
        "success_rate": ok / sent if sent else None,
        "degraded": sum(o.ok and o.degraded for o in outcomes),
        "errors": [
            {"status": status, "code": code, "count": n}
            for (status, code), n in errors.most_common()
        ],
        "latency_ms": latency,
        "served_by": [
            {"served_by": by, "model": m, "count": n} for (by, m), n in served.most_common()
        ],
        "metrics": metrics.note,
    }
    for key, (name, labels) in WATCHED.items():
        report[key] = _counter_report(metrics, name, labels)
    if report["retries"] is not None and sent:
        report["retries"]["per_request"] = round(report["retries"]["total"] / sent, 4)
    return report


def render(report: dict[str, Any], fmt: str) -> None:
    if fmt == "json":
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        return
    from rich.console import Console
    from rich.table import Table

    def table(title: str, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        view = Table(title=title)
        for column in rows[0]:
            view.add_column(column, justify="right" if column == "count" else "left")
        for row in rows:
            view.add_row(*("-" if v is None else str(v) for v in row.values()))
        console.print(view)

    console = Console()
    rate = report["success_rate"]
    lat = report["latency_ms"] or {}
    summary = [
        ("requests", f"{report['sent']} of {report['planned']} ({report['streamed']} streamed)"),
        ("success rate", "n.a." if rate is None else f"{rate:.2%} ({report['succeeded']})"),
        ("degraded answers", str(report["degraded"])),
        ("latency ms", " ".join(f"{k} {v:g}" for k, v in lat.items()) or "n.a."),
        ("elapsed s", f"{report['elapsed_s']:g}"),
    ]
    for key in WATCHED:
        total = "n.a." if report[key] is None else str(report[key]["total"])
        summary.append((key.replace("_", " "), total))
    table(
        f"chaos run: {report['model']} at {report['url']}",
        [{"": k, "value": v} for k, v in summary],
    )
    table("errors", report["errors"])
    table("answered by", report["served_by"])
    for key in WATCHED:
        if report[key] is not None:
            table(key.replace("_", " "), report[key]["by"])
    if report["metrics"] != "ok":
        console.print(f"retries, fallbacks, breaker transitions: n.a. ({report['metrics']})")
