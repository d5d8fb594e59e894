"""A spend report as people ask for it: a period in their words, one document for everyone.

``shipway costs`` and ``GET /admin/costs`` take the same words (``--since 7d`` /
``?since=7d``) and give the same JSON document, built here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from shipway.store.spend import DIMENSIONS, Dimension, SpendLine, SpendStore

__all__ = ["CostReport", "build_report", "parse_dimension", "parse_when"]

_AGO = re.compile(r"^([1-9][0-9]*)([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_when(value: str, now: datetime, *, name: str) -> datetime:
    """``30m``, ``24h``, ``7d``, ``2w`` before ``now``, or an ISO date or time (UTC unless
    it says); ``ValueError`` naming ``name`` otherwise."""
    text = value.strip()
    match = _AGO.match(text)
    if match:
        try:
            return now - timedelta(**{_UNITS[match[2]]: int(match[1])})
        except OverflowError:
            raise ValueError(f"{name} {value!r} is too far back") from None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{name} {value!r}: use 30m, 24h, 7d, 2w or an ISO date such as 2026-11-01"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def parse_dimension(value: str, *, name: str) -> Dimension:
    if value not in DIMENSIONS:
        raise ValueError(f"{name} {value!r}: use one of {', '.join(DIMENSIONS)}")
    return cast(Dimension, value)


@dataclass(frozen=True, slots=True)
class CostReport:
    by: Dimension
    since: datetime
    until: datetime | None
    lines: list[SpendLine]
    total: SpendLine
    """Every request in the period once (a tag report's lines may count one twice)."""

    def to_json(self, currency: str) -> dict[str, Any]:
        return {
            "object": "list",
            "by": self.by,
            "since": self.since.isoformat(),
            "until": None if self.until is None else self.until.isoformat(),
            "currency": currency,
            "data": [_line_json(line, self.by) for line in self.lines],
            "total": _line_json(self.total, None),
        }


async def build_report(
    spend: SpendStore,
    by: Dimension,
    since: datetime,
    until: datetime | None = None,
    *,
    team: str | None = None,
) -> CostReport:
    """Raises ``ValueError`` when ``until`` is not after ``since``."""
    if until is not None and until <= since:
        raise ValueError(f"until ({until.isoformat()}) must be after since ({since.isoformat()})")
    lines = await spend.report(by, since, until, team=team)
    total = await spend.total(since, until, team=team)
    return CostReport(by, since, until, lines, total)


def _line_json(line: SpendLine, by: Dimension | None) -> dict[str, Any]:
    data = line.to_json()
    if by != "key":
        del data["key_id"]
    if by is None:
        del data["group"]
    else:
        data = {by: data.pop("group"), **data}
    return data
