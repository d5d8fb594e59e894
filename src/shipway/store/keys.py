"""API keys: the persistence the keys, auth and rate-limit features build on.

Functions take the ``AsyncSession`` of a ``Database.transaction()``, so a caller can create
a key and append its audit record in one transaction. They return frozen records, never ORM
rows, so a record can be cached in memory and shared between requests. Hashing, scopes and
who-may-do-what are the keys feature's; this module stores what it is given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import exists, select
from sqlalchemy.ext.asyncio import AsyncSession

from shipway.errors import NotFound
from shipway.store.models import ApiKeyRow, TeamRow, utcnow
from shipway.store.teams import insert_unique

__all__ = [
    "KeyRecord",
    "create_key",
    "get_key",
    "get_key_by_hash",
    "has_keys",
    "list_keys",
    "revoke_key",
]


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: int
    team_id: int | None
    name: str
    key_hash: str
    prefix: str
    models: tuple[str, ...] | None  # None: every model the team may use
    rpm: int | None
    tpm: int | None
    max_tokens: int | None
    max_prompt_tokens: int | None
    guards: dict[str, str] | None
    admin: bool
    created_by: int | None
    expires_at: datetime | None
    revoked_at: datetime | None
    created_at: datetime

    def usable(self, now: datetime) -> bool:
        """Neither revoked nor expired at ``now``."""
        if self.revoked_at is not None and self.revoked_at <= now:
            return False
        return self.expires_at is None or now < self.expires_at


def _key(row: ApiKeyRow) -> KeyRecord:
    return KeyRecord(
        id=row.id,
        team_id=row.team_id,
        name=row.name,
        key_hash=row.key_hash,
        prefix=row.prefix,
        models=None if row.models is None else tuple(row.models),
        rpm=row.rpm,
        tpm=row.tpm,
        max_tokens=row.max_tokens,
        max_prompt_tokens=row.max_prompt_tokens,
        guards=None if row.guards is None else dict(row.guards),
        admin=row.admin,
        created_by=row.created_by,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        created_at=row.created_at,
    )


async def create_key(
    session: AsyncSession,
    *,
    name: str,
    key_hash: str,
    prefix: str,
    team_id: int | None = None,
    models: Sequence[str] | None = None,
    rpm: int | None = None,
    tpm: int | None = None,
    max_tokens: int | None = None,
    max_prompt_tokens: int | None = None,
    guards: Mapping[str, str] | None = None,
    admin: bool = False,
    created_by: int | None = None,
    expires_at: datetime | None = None,
) -> KeyRecord:
    """Store a key by its hash; raises ``Conflict`` if the hash is taken (a reused key).

    Raises ``NotFound`` for a ``team_id`` that names no team.
    """
    if team_id is not None and await session.get(TeamRow, team_id) is None:
        raise NotFound(f"no team with id {team_id}; create the team first")
    row = ApiKeyRow(
        name=name,
        key_hash=key_hash,
        prefix=prefix,
        team_id=team_id,
        models=None if models is None else list(models),
        rpm=rpm,
        tpm=tpm,
        max_tokens=max_tokens,
        max_prompt_tokens=max_prompt_tokens,
        guards=None if guards is None else dict(guards),
        admin=admin,
        created_by=created_by,
        expires_at=expires_at,
        created_at=utcnow(),
    )
    await insert_unique(session, row, "a key with that hash exists already; generate a new key")
    return _key(row)


async def get_key_by_hash(session: AsyncSession, key_hash: str) -> KeyRecord | None:
    """The key stored under ``key_hash``, revoked or expired ones included (check ``usable``)."""
    row = await session.scalar(select(ApiKeyRow).where(ApiKeyRow.key_hash == key_hash))
    return None if row is None else _key(row)


async def get_key(session: AsyncSession, key_id: int) -> KeyRecord | None:
    row = await session.get(ApiKeyRow, key_id)
    return None if row is None else _key(row)


async def list_keys(
    session: AsyncSession, *, team_id: int | None = None, include_revoked: bool = True
) -> list[KeyRecord]:
    query = select(ApiKeyRow).order_by(ApiKeyRow.id)
    if team_id is not None:
        query = query.where(ApiKeyRow.team_id == team_id)
    if not include_revoked:
        query = query.where(ApiKeyRow.revoked_at.is_(None))
    return [_key(row) for row in await session.scalars(query)]


async def revoke_key(
    session: AsyncSession, key_id: int, *, at: datetime | None = None
) -> KeyRecord | None:
    """Mark a key revoked (None if there is no such key); revoking twice keeps the first time."""
    row = await session.get(ApiKeyRow, key_id, with_for_update=True)
    if row is None:
        return None
    if row.revoked_at is None:
        row.revoked_at = at or utcnow()
        await session.flush()
    return _key(row)


async def has_keys(session: AsyncSession) -> bool:
    """Whether any key was ever created: from then on every route needs one."""
    return bool(await session.scalar(select(exists().select_from(ApiKeyRow))))
