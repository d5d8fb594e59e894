"""``shipway stats``: the dashboard's summary document as Rich tables, once or live.

The numbers come from the same document the web page draws (summary.py), so the terminal and
the browser agree. ``--watch`` redraws in place; a server that goes away mid-watch is shown
as such and retried, while a refused key ends the command (retrying cannot fix it).
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from shipway.dashboard.stats_client import SummaryUnavailable, fetch_summary

__all__ = ["render_summary", "show_stats"]

_QUANTILES = ("p50", "p95", "p99")

# Model table columns, most important first: a narrow terminal drops from the end of this
# list rather than folding every cell (they are shown in the order of _MODEL_ORDER).
_MODEL_PRIORITY = (
    "model", "requests", "errors", "p95", "state", "req/s", "p50", "p99", "cost", "queue",
    "busy", "workers", "TTFT p50", "tokens in/out",
)  # fmt: skip
_MODEL_ORDER = (
    "model", "state", "workers", "queue", "busy", "requests", "req/s", "errors",
    "p50", "p95", "p99", "TTFT p50", "tokens in/out", "cost",
)  # fmt: skip
_LEFT = frozenset({"model", "state", "workers"})


def show_stats(
    console: Console,
    url: str,
    key: str | None,
    window_s: int,
    *,
    watch: bool,
    interval_s: float,
) -> None:
    """Print the summary (raises ``SummaryUnavailable``); with ``watch``, until Ctrl-C."""
    document = fetch_summary(url, key, window_s)
    if not watch:
        console.print(render_summary(document, url, console.width))
        return
    first = render_summary(document, url, console.width)
    with Live(first, console=console, auto_refresh=False) as live:
        while True:
            time.sleep(interval_s)
            try:
                document = fetch_summary(url, key, window_s)
                view = render_summary(document, url, console.width)
            except SummaryUnavailable as exc:
                if exc.status in (401, 403):
                    raise
                # The last numbers stay on screen, marked stale, until the server is back.
                stale = render_summary(document, url, console.width)
                view = Group(stale, Text(f"stale: {exc}", style="red"))
            live.update(view, refresh=True)


def render_summary(document: dict[str, Any], url: str, width: int = 200) -> RenderableType:
    currency = str(document.get("currency", ""))
    when = datetime.fromtimestamp(float(document["server_time"])).strftime("%H:%M:%S")
    title = Text.assemble(
        ("Shipway ", "bold"), url, f" · last {document['window_s']} s · server time {when}"
    )
    return Group(
        title,
        _totals(document["totals"], currency),
        _models(document["models"], currency, width),
        _alerts(document.get("alerts", [])),
    )


def _totals(totals: dict[str, Any], currency: str) -> Table:
    """Label-value pairs two to a line: legible in an 80-column terminal."""
    pairs = [
        ("requests", f"{totals['requests']} ({_num(totals['requests_per_s'])}/s)"),
        ("errors", f"{totals['errors']} ({_pct(totals['error_rate'])})"),
        ("latency p50/p95/p99", " / ".join(_ms(totals[f"latency_{q}_s"]) for q in _QUANTILES)),
        ("TTFT p50/p95", f"{_ms(totals['ttft_p50_s'])} / {_ms(totals['ttft_p95_s'])}"),
        ("tokens in/out", f"{totals['prompt_tokens']} / {totals['completion_tokens']}"),
        (
            "cost",
            f"{_money(totals['cost'], currency)} "
            f"({_money(totals.get('cost_per_hour', 0.0), currency)}/hour)",
        ),
    ]
    by_type = totals.get("errors_by_type") or {}
    if by_type:
        pairs.append(("errors by type", ", ".join(f"{k} {v}" for k, v in sorted(by_type.items()))))
    table = Table.grid(padding=(0, 2))
    for style in ("dim", "bold", "dim", "bold"):
        table.add_column(style=style)
    for i in range(0, len(pairs), 2):
        table.add_row(*(cell for pair in pairs[i : i + 2] for cell in pair))
    return table


def _models(models: list[dict[str, Any]], currency: str, width: int) -> Table:
    cells = {name: [name] for name in _MODEL_ORDER}
    for m in models:
        workers = ", ".join(f"{n} {state}" for state, n in m["workers"].items())
        if not workers and m.get("slots") is not None:
            workers = f"{_num(m['slots'])} upstream"
        row = {
            "model": m["model"],
            "state": m["state"],
            "workers": workers or "-",
            "queue": _of(m.get("waiting"), m.get("max_waiting")),
            "busy": _of(m.get("busy"), m.get("slots")),
            "requests": str(m["requests"]),
            "req/s": _num(m["requests_per_s"]),
            "errors": f"{m['errors']} ({_pct(m['error_rate'])})" if m["errors"] else "0",
            "p50": _ms(m["latency_p50_s"]),
            "p95": _ms(m["latency_p95_s"]),
            "p99": _ms(m["latency_p99_s"]),
            "TTFT p50": _ms(m["ttft_p50_s"]),
            "tokens in/out": f"{m['prompt_tokens']} / {m['completion_tokens']}",
            "cost": _money(m["cost"], currency),
        }
        for name, value in row.items():
            cells[name].append(value)
    shown: set[str] = set()
    used = 0
    for name in _MODEL_PRIORITY:
        need = max(len(value) for value in cells[name]) + 3  # padding and a rule
        if used + need <= width or not shown:
            shown.add(name)
            used += need
    table = Table(title="models", title_justify="left", show_edge=False)
    columns = [name for name in _MODEL_ORDER if name in shown]
    for name in columns:
        table.add_column(name, justify="left" if name in _LEFT else "right", no_wrap=True)
    for index in range(1, len(cells["model"])):
        table.add_row(*(cells[name][index] for name in columns))
    return table


def _alerts(alerts: list[dict[str, Any]]) -> RenderableType:
    if not alerts:
        return Text("alerts: none firing", style="green")
    table = Table(title="alerts firing", title_justify="left", show_edge=False)
    for column in ("severity", "rule", "model", "summary"):
        table.add_column(column)
    for alert in alerts:
        table.add_row(
            *(str(alert.get(name) or "") for name in ("severity", "rule", "model", "summary")),
            style="red" if alert.get("severity") == "critical" else "yellow",
        )
    return table


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.3f}" if abs(value) < 0.1 else f"{value:.2f}"


def _of(value: float | None, limit: float | None) -> str:
    return "-" if value is None else f"{_num(value)} / {_num(limit)}"


def _pct(rate: float) -> str:
    return f"{rate * 100:.1f}%"


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.2f} s" if seconds >= 1 else f"{seconds * 1000:.0f} ms"


def _money(value: float, currency: str) -> str:
    return f"{value:.6f} {currency}" if 0 < value < 0.01 else f"{value:.2f} {currency}"
