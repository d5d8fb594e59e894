"""Files for batch jobs (OpenAI's ``/v1/files``): uploaded inputs and the outputs batches write.

Functions take the ``AsyncSession`` of a ``Database.transaction()`` and return frozen records
without the content, which only ``file_content`` reads. Who may see a file is decided by a
``Viewer``: its owner's key, every key for an admin.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import ColumnElement, and_, delete, or_, select, true
from sqlalchemy.ext.asyncio import AsyncSession

from shipway.store.batch_models import FileRow

__all__ = [
    "FileRecord",
    "Viewer",
    "create_file",
    "delete_file",
    "file_content",
    "get_file",
    "list_files",
    "new_file_id",
    "visible",
]


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who is looking: a key's id (None: the anonymous caller of an open server), and
    whether it is an admin's (sees every owner's)."""

    key_id: int | None
    admin: bool = False


@dataclass(frozen=True, slots=True)
class FileRecord:
    id: str
    owner_key_id: int | None
    purpose: str
    filename: str
    bytes: int
    created_at: datetime


def new_file_id() -> str:
    return f"file-{secrets.token_hex(12)}"


def visible(owner_column: Any, viewer: Viewer) -> ColumnElement[bool]:
    """The condition for rows ``viewer`` may see, by their owner's key id."""
    if viewer.admin:
        return true()
    if viewer.key_id is None:
        return owner_column.is_(None)  # type: ignore[no-any-return]
    return owner_column == viewer.key_id  # type: ignore[no-any-return]


def _record(row: FileRow) -> FileRecord:
    return FileRecord(
        id=row.id,
        owner_key_id=row.owner_key_id,
        purpose=row.purpose,
        filename=row.filename,
        bytes=row.size,
        created_at=row.created_at,
    )


_COLUMNS = (
    FileRow.id,
    FileRow.owner_key_id,
    FileRow.purpose,
    FileRow.filename,
    FileRow.size,
    FileRow.created_at,
)


async def create_file(
    session: AsyncSession,
    *,
    owner_key_id: int | None,
    purpose: str,
    filename: str,
    content: bytes,
    at: datetime,
    file_id: str | None = None,
) -> FileRecord:
    row = FileRow(
        id=file_id or new_file_id(),
        owner_key_id=owner_key_id,
        purpose=purpose,
        filename=filename[:255],
        size=len(content),
        content=content,
        created_at=at,
    )
    session.add(row)
    await session.flush()
    return _record(row)


async def get_file(session: AsyncSession, file_id: str, viewer: Viewer) -> FileRecord | None:
    query = select(*_COLUMNS).where(FileRow.id == file_id, visible(FileRow.owner_key_id, viewer))
    row = (await session.execute(query)).one_or_none()
    return None if row is None else FileRecord(*row)


async def file_content(session: AsyncSession, file_id: str, viewer: Viewer) -> bytes | None:
    query = select(FileRow.content).where(
        FileRow.id == file_id, visible(FileRow.owner_key_id, viewer)
    )
    content: bytes | None = await session.scalar(query)
    return content


async def list_files(
    session: AsyncSession,
    viewer: Viewer,
    *,
    limit: int,
    after: str | None = None,
    purpose: str | None = None,
    order: Literal["asc", "desc"] = "desc",
) -> tuple[list[FileRecord], bool]:
    """Up to ``limit`` files by creation time (then id), after the file ``after``; and
    whether more follow."""
    query = select(*_COLUMNS).where(visible(FileRow.owner_key_id, viewer))
    if purpose is not None:
        query = query.where(FileRow.purpose == purpose)
    if after is not None:
        where = (FileRow.id == after, visible(FileRow.owner_key_id, viewer))
        cursor = (
            await session.execute(select(FileRow.created_at, FileRow.id).where(*where))
        ).one_or_none()
        if cursor is not None:
            at, cursor_id = cursor
            created, key = FileRow.created_at, FileRow.id
            if order == "desc":
                query = query.where(or_(created < at, and_(created == at, key < cursor_id)))
            else:
                query = query.where(or_(created > at, and_(created == at, key > cursor_id)))
    if order == "desc":
        query = query.order_by(FileRow.created_at.desc(), FileRow.id.desc())
    else:
        query = query.order_by(FileRow.created_at, FileRow.id)
    rows = (await session.execute(query.limit(limit + 1))).all()
    return [FileRecord(*row) for row in rows[:limit]], len(rows) > limit


async def delete_file(session: AsyncSession, file_id: str, viewer: Viewer) -> bool:
    result = await session.execute(
        delete(FileRow).where(FileRow.id == file_id, visible(FileRow.owner_key_id, viewer))
    )
    return bool(getattr(result, "rowcount", 0))
