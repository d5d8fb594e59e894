"""``shipway costs``: who spent what, from the database the server of these settings uses.

Reads without migrating (safe beside a live server). Prints a Rich table with a totals row,
CSV (one line per group, no totals: a tool sums it) or the JSON document ``/admin/costs``
returns. Exit 2 for a bad option, 1 when the database cannot be read.
"""

from __future__ import annotations

import asyncio
import csv
import io
from datetime import UTC, datetime

import orjson
import typer
from rich.console import Console
from rich.table import Table

from shipway.config import ShipwaySettings
from shipway.costs.report import CostReport, build_report, parse_dimension, parse_when
from shipway.errors import StoreUnavailable
from shipway.store.database import Database
from shipway.store.spend import Dimension, SpendLine, SpendStore
from shipway.store.urls import sqlite_path

__all__ = ["FORMATS", "show_costs"]

FORMATS = ("table", "csv", "json")
# The revision that made the `call_costs` table (revision ids are zero-padded numbers).
_COSTS_REVISION = "0003"
_NONE = {"team": "(no team)", "key": "(no key)", "model": "(none)", "tag": "(untagged)"}
# Short: the table must fit 80 columns (the width when stdout is not a terminal).
_HEADERS = ("requests", "tokens\nin", "tokens\nout", "cost", "saved", "cache\nhits")
_COLUMNS = ("requests", "prompt_tokens", "completion_tokens", "cost", "saved", "cache_hits")


def show_costs(
    settings: ShipwaySettings, *, by: str, since: str, until: str | None, fmt: str
) -> int:
    """Print the report; returns the exit code."""
    now = datetime.now(UTC)
    try:
        dimension = parse_dimension(by, name="--by")
        start = parse_when(since, now, name="--since")
        end = None if until is None else parse_when(until, now, name="--until")
        if fmt not in FORMATS:
            raise ValueError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
        if end is not None and end <= start:
            raise ValueError("--until must be after --since")
    except ValueError as exc:
        typer.echo(str(exc), err=True)
        return 2
    try:
        report = asyncio.run(_read(settings, dimension, start, end))
    except StoreUnavailable as exc:
        typer.echo(str(exc), err=True)
        return 1
    currency = settings.telemetry.currency
    if fmt == "json":
        typer.echo(orjson.dumps(report.to_json(currency), option=orjson.OPT_INDENT_2).decode())
    elif fmt == "csv":
        typer.echo(_csv(report), nl=False)
    else:
        Console().print(_table(report, currency))
    return 0


async def _read(
    settings: ShipwaySettings, by: Dimension, since: datetime, until: datetime | None
) -> CostReport:
    database = Database.from_settings(settings)
    path = sqlite_path(database.url)
    if path is not None and not path.exists():
        raise StoreUnavailable(f"no database at {path}; pass --data-dir or --database-url")
    await database.start(migrate_schema=False)
    try:
        revision = await database.revision()
        if revision is None or revision < _COSTS_REVISION:
            raise StoreUnavailable(
                f"{database.display_url} has no cost records (schema {revision or 'empty'}); "
                "run `shipway db upgrade` first"
            )
        return await build_report(SpendStore(database), by, since, until)
    finally:
        await database.stop()


def _csv(report: CostReport) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    keyed = report.by == "key"
    writer.writerow([report.by, *(["key_id"] if keyed else []), *_COLUMNS])
    for line in report.lines:
        key_id = [line.key_id] if keyed else []
        writer.writerow([line.group or "", *key_id, *_numbers(line)])
    return out.getvalue()


def _numbers(line: SpendLine) -> list[object]:
    return [
        line.requests,
        line.prompt_tokens,
        line.completion_tokens,
        repr(line.cost),
        repr(line.saved),
        line.cache_hits,
    ]


def _table(report: CostReport, currency: str) -> Table:
    period = f"since {report.since:%Y-%m-%d %H:%M} UTC"
    if report.until is not None:
        period += f" until {report.until:%Y-%m-%d %H:%M} UTC"
    caption = None
    if report.by == "tag":
        caption = "a request with several tags counts under each; the total counts it once"
    table = Table(
        title=f"spend by {report.by} {period} ({currency})", caption=caption, show_footer=True
    )
    table.add_column(report.by, footer="total", overflow="fold")
    for header, value in zip(_HEADERS, _cells(report.total), strict=True):
        table.add_column(header, footer=value, justify="right", no_wrap=True)
    for line in report.lines:
        label = line.group if line.group is not None else _NONE.get(report.by, "(none)")
        if report.by == "key" and line.key_id is not None:
            label = f"{label} ({line.key_id})"
        table.add_row(label, *_cells(line))
    return table


def _cells(line: SpendLine) -> list[str]:
    return [
        f"{line.requests:,}",
        f"{line.prompt_tokens:,}",
        f"{line.completion_tokens:,}",
        f"{line.cost:,.6f}",
        f"{line.saved:,.6f}",
        f"{line.cache_hits:,}",
    ]
