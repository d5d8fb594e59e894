"""``Database``: the async engine over SQLite or PostgreSQL, its migrations and transactions.

Built from the settings at start-up and passed to whatever needs it; ``start`` migrates to
the newest schema (idempotent), ``stop`` closes the pool. Callers get work done in
``transaction()``, which commits on success, rolls back on an error, and turns a database
that cannot be reached into ``StoreUnavailable``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from shipway.config import ShipwaySettings
from shipway.errors import StoreUnavailable
from shipway.store import migrate
from shipway.store.urls import async_url, database_url, redact, sqlite_path

__all__ = ["Database"]

# Any constant shared by every Shipway replica: PostgreSQL serialises migrations on it.
_MIGRATION_LOCK = 0x5348_4950  # "SHIP"
# During work, only these mean the database went away; at start-up (connecting, migrating)
# any driver error means it cannot be used as configured.
_UNREACHABLE: tuple[type[BaseException], ...] = (OperationalError, InterfaceError, OSError)
_UNUSABLE: tuple[type[BaseException], ...] = (DBAPIError, OSError)
# asyncpg waits 60 s for an unanswered connect by default; start-up should say so sooner.
_PG_CONNECT_TIMEOUT_S = 10


class Database:
    def __init__(self, url: str) -> None:
        self.url = async_url(url)
        self._engine: AsyncEngine | None = None
        self._sessions: async_sessionmaker[AsyncSession] | None = None

    @classmethod
    def from_settings(cls, settings: ShipwaySettings) -> Database:
        return cls(database_url(settings))

    @property
    def display_url(self) -> str:
        """The URL with any password masked: the only form to log or print."""
        return redact(self.url)

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("Database.start() has not been called")
        return self._engine

    async def start(self, *, migrate_schema: bool = True) -> None:
        """Open the pool and bring the schema to the newest revision (a no-op when it is)."""
        path = sqlite_path(self.url)
        if path is not None:
            # The data directory holds key hashes and the audit log: only its owner reads it.
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        connect_args = {} if path is not None else {"timeout": _PG_CONNECT_TIMEOUT_S}
        engine = create_async_engine(self.url, pool_pre_ping=True, connect_args=connect_args)
        if path is not None:
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        self._engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        try:
            if migrate_schema:
                await self.upgrade()
            else:
                async with self._translated(_UNUSABLE), engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
        self._engine = None
        self._sessions = None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session in one transaction: committed when the block ends, rolled back on error."""
        if self._sessions is None:
            raise RuntimeError("Database.start() has not been called")
        async with self._translated(_UNREACHABLE), self._sessions.begin() as session:
            yield session

    async def upgrade(self, revision: str = "head") -> None:
        """Migrate to ``revision``; replicas starting together on PostgreSQL take turns."""
        async with self._translated(_UNUSABLE), self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                lock = text("SELECT pg_advisory_xact_lock(:id)")
                await conn.execute(lock, {"id": _MIGRATION_LOCK})
            elif conn.dialect.name == "sqlite":
                # Take the write lock before reading the revision: a second process waits
                # (busy_timeout), then finds the schema current.
                await conn.exec_driver_sql("BEGIN IMMEDIATE")
            await conn.run_sync(migrate.upgrade, revision)

    async def revision(self) -> str | None:
        """The schema revision the database is at (None: not migrated yet)."""
        async with self._translated(_UNUSABLE), self.engine.connect() as conn:
            return await conn.run_sync(migrate.current_revision)

    @asynccontextmanager
    async def _translated(self, errors: tuple[type[BaseException], ...]) -> AsyncIterator[None]:
        try:
            yield
        except errors as exc:
            raise StoreUnavailable(
                f"database {self.display_url} cannot be used: {type(exc).__name__}: "
                f"{_first_line(exc)}; check `database_url` (SHIPWAY_DATABASE_URL) and that "
                "the database is running"
            ) from exc


def _first_line(exc: BaseException) -> str:
    # SQLAlchemy appends the SQL and a help link; the first line is the driver's reason.
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # busy_timeout: a writer waits for another instead of failing. foreign_keys: SQLite
    # ignores REFERENCES without it.
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA foreign_keys=ON")
    # In WAL mode NORMAL never corrupts the file; a power cut may lose the last commits, as
    # it would the audit records still queued in memory. FULL syncs on every commit.
    cursor.execute("PRAGMA synchronous=NORMAL")
    # WAL, so `shipway keys create` can write while the server reads. The mode is kept in
    # the file, so only a new file needs the switch; the switch fails at once (no busy wait)
    # while another connection holds a lock, and that connection or the next one makes it.
    cursor.execute("PRAGMA journal_mode")
    if cursor.fetchone()[0] != "wal":
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc):
                raise
    cursor.close()
