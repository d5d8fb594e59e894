"""Durable and shared state: the only package that opens a database or Redis.

    Database          SQLite file in ``data_dir`` (default) or PostgreSQL (``database_url``);
                      Alembic migrations run by ``Database.start`` and ``shipway db upgrade``
    teams, keys       teams and API keys: create, look up (keys by hash), list, revoke
    Counter           exact windowed counts (rate limits, budgets) shared by every replica:
    ├── MemoryCounter     one process, injectable clock
    └── RedisCounter      every replica, one atomic Lua script per call

Everything here is built from the settings at start-up (``Database.from_settings``,
``build_counter``), started and stopped by the server's lifespan, and passed down to the
features that need it; nothing is kept at module level.
"""

from __future__ import annotations

from shipway.config import ShipwaySettings
from shipway.store.counter import Counter, CounterResult
from shipway.store.database import Database
from shipway.store.memory_counter import MemoryCounter
from shipway.store.redis_counter import RedisCounter

__all__ = [
    "Counter",
    "CounterResult",
    "Database",
    "MemoryCounter",
    "RedisCounter",
    "build_counter",
]


def build_counter(settings: ShipwaySettings) -> Counter:
    """Redis when ``redis_url`` is set (exact across replicas), else this process's memory."""
    if settings.redis_url:
        return RedisCounter.from_url(settings.redis_url)
    return MemoryCounter()
