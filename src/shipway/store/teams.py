"""Teams: a name, the models its keys may use and its own rate limits.

Functions take the ``AsyncSession`` of a ``Database.transaction()`` and return frozen
records, never ORM rows, so a record can be cached and shared between requests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from shipway.errors import Conflict
from shipway.store.models import Base, TeamRow, utcnow

__all__ = ["TeamRecord", "create_team", "get_team", "get_team_by_id", "insert_unique", "list_teams"]


@dataclass(frozen=True, slots=True)
class TeamRecord:
    id: int
    name: str
    models: tuple[str, ...] | None  # None: no team-wide restriction
    rpm: int | None
    tpm: int | None
    created_at: datetime


def _team(row: TeamRow) -> TeamRecord:
    models = None if row.models is None else tuple(row.models)
    return TeamRecord(row.id, row.name, models, row.rpm, row.tpm, row.created_at)


async def create_team(
    session: AsyncSession,
    name: str,
    *,
    models: Sequence[str] | None = None,
    rpm: int | None = None,
    tpm: int | None = None,
) -> TeamRecord:
    """Raises ``Conflict`` when a team of that name exists."""
    listed = None if models is None else list(models)
    row = TeamRow(name=name, models=listed, rpm=rpm, tpm=tpm, created_at=utcnow())
    await insert_unique(session, row, f"a team named {name!r} exists already")
    return _team(row)


async def get_team(session: AsyncSession, name: str) -> TeamRecord | None:
    row = await session.scalar(select(TeamRow).where(TeamRow.name == name))
    return None if row is None else _team(row)


async def get_team_by_id(session: AsyncSession, team_id: int) -> TeamRecord | None:
    row = await session.get(TeamRow, team_id)
    return None if row is None else _team(row)


async def list_teams(session: AsyncSession) -> list[TeamRecord]:
    return [_team(row) for row in await session.scalars(select(TeamRow).order_by(TeamRow.id))]


async def insert_unique(session: AsyncSession, row: Base, taken: str) -> None:
    """Insert ``row``; a unique value already taken becomes ``Conflict(taken)``.

    The error leaves the transaction unusable (PostgreSQL aborts it); it propagates out of
    ``Database.transaction()``, which rolls back, so nothing half-done is committed.
    """
    session.add(row)
    try:
        await session.flush()
    except IntegrityError as exc:
        raise Conflict(taken) from exc
