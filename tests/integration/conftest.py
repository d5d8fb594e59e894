"""Real PostgreSQL and Redis for the store tests.

Each run gets its own PostgreSQL database (dropped afterwards) and each test its own Redis key
prefix (deleted afterwards), so parallel runs and other users of the servers are untouched.
A server that cannot be reached skips its tests with the reason, except on CI (CI=true),
where it fails them: a green CI must mean the tests ran.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
from tests.support.live_stores import drop_postgres, new_postgres_database, unreachable
from tests.support.stores import Replicas

from shipway.store import Counter, Database
from shipway.store.models import Base

REDIS = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """One database for the whole run; each test empties the tables it used."""
    url = new_postgres_database()
    yield url
    drop_postgres(url)


@pytest.fixture
def fresh_postgres_url() -> Iterator[str]:
    """A database of its own for a test that needs an empty one."""
    url = new_postgres_database()
    yield url
    drop_postgres(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database nothing has touched yet: a new SQLite path or a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'empty' / 'shipway.db'}"
    url: str = request.getfixturevalue("fresh_postgres_url")
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'data' / 'shipway.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    db = Database(database_url)
    await db.start()
    yield db
    async with db.transaction() as session:
        for table in reversed(Base.metadata.sorted_tables):
            await session.execute(table.delete())
    await db.stop()


@pytest.fixture(scope="session")
def redis_url() -> str:
    client = redis.Redis.from_url(REDIS, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        unreachable(f"Redis at {REDIS}", repr(exc))
    finally:
        client.close()
    return REDIS


@pytest.fixture(params=["memory", "redis"])
async def replicas(request: pytest.FixtureRequest) -> AsyncIterator[Replicas]:
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    group = Replicas(request.param, url)
    yield group
    await group.close()


@pytest.fixture
async def counter(replicas: Replicas) -> Counter:
    return await replicas.counter()
