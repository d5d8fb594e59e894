"""Alembic, run programmatically on a connection we hold (no ``alembic.ini``).

The functions are synchronous because Alembic is; ``Database`` runs them on its async
connection with ``run_sync``, inside its own transaction and, on PostgreSQL, under an advisory
lock, so replicas starting together migrate once.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.engine import Connection

from shipway.errors import StoreUnavailable

__all__ = ["MIGRATIONS", "current_revision", "head_revision", "upgrade"]

MIGRATIONS = Path(__file__).parent / "migrations"


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    # Config values are interpolated by configparser: a literal % must be doubled.
    config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision shipped with this version of Shipway."""
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None, "no migrations shipped"
    return head


def current_revision(connection: Connection) -> str | None:
    """The revision the database is at; None for an empty database."""
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(connection: Connection, revision: str = "head") -> None:
    """Apply every migration up to ``revision``; nothing happens when already there."""
    try:
        command.upgrade(_config(connection), revision)
    except CommandError as exc:
        # Typically a revision this version does not ship: a newer Shipway migrated the
        # database. Starting anyway would run old code on a schema it does not know.
        raise StoreUnavailable(
            f"cannot migrate the database: {exc}; if a newer Shipway migrated it, run that "
            "version (or restore a backup taken before the upgrade)"
        ) from exc
