"""Which database URL to use, in the driver the store speaks, and how to show it safely."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from shipway.config import ShipwaySettings
from shipway.errors import ConfigError

__all__ = ["DATABASE_FILE", "async_url", "database_url", "redact", "sqlite_path"]

DATABASE_FILE = "shipway.db"

# What users write → the asyncio driver for it.
_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgres": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
}


def database_url(settings: ShipwaySettings) -> str:
    """``database_url`` if set, else the SQLite file in ``data_dir`` (an absolute path)."""
    if settings.database_url:
        return async_url(settings.database_url)
    path = (settings.data_dir / DATABASE_FILE).absolute()
    return URL.create("sqlite+aiosqlite", database=str(path)).render_as_string(False)


def async_url(url: str) -> str:
    """``url`` with its driver replaced by the asyncio one (``postgresql://`` → asyncpg)."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(f"database_url: not a URL: {redact(url)}") from exc
    driver = _DRIVERS.get(parsed.drivername)
    if driver is None:
        raise ConfigError(
            f"database_url: {parsed.drivername!r} is not supported; use sqlite:///PATH "
            "or postgresql://USER@HOST:PORT/DATABASE"
        )
    return parsed.set(drivername=driver).render_as_string(hide_password=False)


def redact(url: str) -> str:
    """The URL with its password masked, for logs and messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(unparseable URL)"


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL (None for another database or an in-memory one)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)
