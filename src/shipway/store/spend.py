"""What each request cost, by whom: appended in batches, summed for reports and budgets.

One row per finished request (``call_costs``) with the key, team, end user and tags it is
attributed to and the model asked for and the model that served. Reports group in SQL; tags
(a JSON list per row) are unnested by the database itself (``json_each`` on SQLite,
``json_array_elements_text`` on PostgreSQL), so a week of traffic is never read into memory.

In every report a line whose group is ``None`` holds the requests with no value for it (no
team, no key, no tags). A request with two tags counts in both tags' lines, so a tag
report's lines can add up to more than ``total``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, get_args
from typing import cast as typed

import orjson
from sqlalchemy import ColumnElement, Select, String, Table, case, func, null, select, true
from sqlalchemy.sql.functions import FunctionElement

from shipway.store.database import Database
from shipway.store.models import CallCostRow

__all__ = ["DIMENSIONS", "CallCost", "Dimension", "Scope", "SpendLine", "SpendStore"]

Dimension = Literal["team", "key", "model", "tag", "user"]
Scope = Literal["key", "team", "tag"]
DIMENSIONS: tuple[str, ...] = get_args(Dimension)

_TABLE = typed(Table, CallCostRow.__table__)
_C = _TABLE.c
# Column widths (models.py): longer values are cut so a row is never refused for them.
_ID_MAX, _NAME_MAX, _USER_MAX, _MODEL_MAX = 64, 200, 256, 128

# Written through the driver, as the audit log is (store/audit.py): SQLAlchemy's per-row
# parameter processing would cost the event loop ~12 µs a row. `user` is quoted: PostgreSQL
# reserves the word. Constant text: the values are bound by the driver.
_COLUMNS = (
    'request_id, at, key_id, key_name, team, "user", tags, model_requested, model_served, '
    "prompt_tokens, completion_tokens, cost, saved, cached, batch_id"
)
_INSERT_SQL = {
    "qmark": f"INSERT INTO call_costs ({_COLUMNS}) VALUES ({', '.join('?' * 15)})",  # noqa: S608
    "numeric_dollar": (
        f"INSERT INTO call_costs ({_COLUMNS}) "  # noqa: S608
        f"VALUES ({', '.join(f'${n}' for n in range(1, 16))})"
    ),
}


@dataclass(frozen=True, slots=True)
class CallCost:
    """One finished request's cost and whom it is attributed to."""

    request_id: str
    at: datetime
    key_id: int | None
    key_name: str | None
    team: str | None
    user: str | None
    """The request body's ``user`` field: the client's own end user."""
    tags: Sequence[str] | None
    model_requested: str
    model_served: str
    prompt_tokens: int
    completion_tokens: int
    cost: float
    saved: float = 0.0
    """What a cache hit would have cost; 0 otherwise."""
    cached: bool = False
    batch_id: str | None = None


@dataclass(frozen=True, slots=True)
class SpendLine:
    group: str | None
    """The team, key name, model, tag or user; None: requests without one."""
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost: float
    saved: float
    cache_hits: int
    key_id: int | None = None
    """For a report by key: the key's id (names need not be unique)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "key_id": self.key_id,
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost": self.cost,
            "saved": self.saved,
            "cache_hits": self.cache_hits,
        }


class SpendStore:
    def __init__(self, database: Database) -> None:
        self._database = database

    async def append(self, rows: Sequence[CallCost]) -> None:
        """Store ``rows`` in one transaction, one multi-row INSERT."""
        if not rows:
            return
        async with self._database.transaction() as session:
            conn = await session.connection()
            dialect = conn.dialect.name
            params = [_params(row, dialect) for row in rows]
            await conn.exec_driver_sql(_INSERT_SQL[conn.dialect.paramstyle], params)

    async def report(
        self,
        by: Dimension,
        since: datetime,
        until: datetime | None = None,
        *,
        team: str | None = None,
    ) -> list[SpendLine]:
        """Spend in ``[since, until)`` grouped ``by`` one dimension, largest cost first.

        ``team``: only that team's requests (what a team's own admin key may see).
        """
        if by not in DIMENSIONS:
            raise ValueError(f"cannot group by {by!r}; use one of {', '.join(DIMENSIONS)}")
        async with self._database.transaction() as session:
            dialect = (await session.connection()).dialect.name
            if by == "tag":
                query = self._by_tag(dialect, since, until, team)
            else:
                query = _grouped(by, since, until, team)
            rows = (await session.execute(query)).all()
        # The untagged line is an aggregate without GROUP BY: one row even when empty.
        lines = [_line(row, by) for row in rows if row.requests]
        lines.sort(key=lambda line: (-line.cost, line.group is None, line.group or ""))
        return lines

    async def total(
        self, since: datetime, until: datetime | None = None, *, team: str | None = None
    ) -> SpendLine:
        """All spend in ``[since, until)``, each request counted once."""
        query = select(*_sums()).where(*_window(since, until, team))
        async with self._database.transaction() as session:
            row = (await session.execute(query)).one()
        return _line(row, None)

    async def spent(
        self, scope: Scope, value: str, since: datetime, models: Sequence[str] | None = None
    ) -> float:
        """Spend since ``since`` of one key (``value``: its id), team or tag, counting only
        calls served by ``models`` (None: all): a budget's counter after a restart."""
        conditions = list(_window(since, None, None))
        if models is not None:
            conditions.append(_C.model_served.in_(list(models)))
        async with self._database.transaction() as session:
            dialect = (await session.connection()).dialect.name
            if scope == "key":
                query = select(func.sum(_C.cost)).where(_C.key_id == int(value), *conditions)
            elif scope == "team":
                query = select(func.sum(_C.cost)).where(_C.team == value, *conditions)
            elif scope == "tag":
                tag = _tags(dialect)
                query = (
                    select(func.sum(_C.cost))
                    .select_from(_TABLE)
                    .join(tag, true())
                    .where(tag.c.value == value, *conditions)
                )
            else:
                raise ValueError(f"no budget scope {scope!r}; use key, team or tag")
            total = await session.scalar(query)
        return _money(total or 0.0)

    def _by_tag(
        self, dialect: str, since: datetime, until: datetime | None, team: str | None
    ) -> Select[Any]:
        tag = _tags(dialect)
        window = _window(since, until, team)
        tagged = (
            select(tag.c.value.label("grp"), *_sums())
            .select_from(_TABLE)
            .join(tag, true())
            .where(*window)
            .group_by(tag.c.value)
        )
        untagged = select(_null_group(), *_sums()).where(_C.tags.is_(None), *window)
        return typed(Select[Any], tagged.union_all(untagged))


def _params(row: CallCost, dialect: str) -> tuple[Any, ...]:
    tags = list(row.tags) if row.tags else None
    return (
        row.request_id[:_ID_MAX],
        _driver_time(row.at, dialect),
        row.key_id,
        _cut(row.key_name, _NAME_MAX),
        _cut(row.team, _NAME_MAX),
        _cut(row.user, _USER_MAX),
        # SQL NULL, never JSON null, for no tags: the unnesting functions skip NULL only.
        None if tags is None else orjson.dumps(tags).decode(),
        row.model_requested[:_MODEL_MAX],
        row.model_served[:_MODEL_MAX],
        int(row.prompt_tokens),
        int(row.completion_tokens),
        float(row.cost),
        float(row.saved),
        bool(row.cached),
        _cut(row.batch_id, _ID_MAX),
    )


def _cut(value: str | None, limit: int) -> str | None:
    return None if value is None else value[:limit]


def _driver_time(at: datetime, dialect: str) -> Any:
    """As SQLAlchemy's DateTime writes it on SQLite (naive UTC text, which sorts and compares
    as time); asyncpg takes the aware datetime."""
    if at.tzinfo is None:
        raise ValueError("spend times must be timezone-aware (use datetime.now(UTC))")
    if dialect == "sqlite":
        return at.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
    return at


def _sums() -> list[ColumnElement[Any]]:
    return [
        func.count().label("requests"),
        func.coalesce(func.sum(_C.prompt_tokens), 0).label("prompt"),
        func.coalesce(func.sum(_C.completion_tokens), 0).label("completion"),
        func.coalesce(func.sum(_C.cost), 0.0).label("cost"),
        func.coalesce(func.sum(_C.saved), 0.0).label("saved"),
        func.coalesce(func.sum(case((_C.cached, 1), else_=0)), 0).label("hits"),
    ]


def _window(since: datetime, until: datetime | None, team: str | None) -> list[Any]:
    conditions: list[Any] = [_C.at >= since]
    if until is not None:
        conditions.append(_C.at < until)
    if team is not None:
        conditions.append(_C.team == team)
    return conditions


def _grouped(
    by: Dimension, since: datetime, until: datetime | None, team: str | None
) -> Select[Any]:
    window = _window(since, until, team)
    if by == "key":
        # Grouped by id; the name is the newest one seen for it (a key's name never changes).
        name = func.max(_C.key_name).label("grp")
        return select(name, _C.key_id, *_sums()).where(*window).group_by(_C.key_id)
    column = {"team": _C.team, "model": _C.model_served, "user": _C.user}[by]
    return select(column.label("grp"), *_sums()).where(*window).group_by(column)


def _null_group() -> ColumnElement[Any]:
    return null().cast(String).label("grp")


def _tags(dialect: str) -> Any:
    """A table-valued function over each row's tags, one ``value`` per tag."""
    unnest: FunctionElement[Any]
    if dialect == "postgresql":
        unnest = func.json_array_elements_text(_C.tags)
    else:
        unnest = func.json_each(_C.tags)
    return unnest.table_valued("value").alias("tag")


def _money(value: Any) -> float:
    # Sums of binary fractions drift in the last digits (0.007000000000000001); 1e-12 of a
    # currency unit is far below what one token costs at any price.
    return round(float(value), 12)


def _line(row: Any, by: Dimension | None) -> SpendLine:
    return SpendLine(
        group=None if by is None else row.grp,
        requests=int(row.requests),
        prompt_tokens=int(row.prompt),
        completion_tokens=int(row.completion),
        cost=_money(row.cost),
        saved=_money(row.saved),
        cache_hits=int(row.hits),
        key_id=row.key_id if by == "key" else None,
    )
