"""Real PostgreSQL and Redis for end-to-end tests of replicas that share them.

A fresh PostgreSQL database per use (dropped afterwards), and a Redis database number of the
e2e tests' own whose counter keys are deleted before and after: a `shipway serve` names its
Redis keys itself (``shipway:counter:``…, with key ids that start at 1 in a fresh database),
so it cannot be given a per-test prefix. Unreachable, they skip the test, except on CI
(CI=true), where they fail it: a green CI must mean the test ran.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import asyncpg
import pytest
import redis
from sqlalchemy.engine import make_url
from tests.support.shared_files import ON_CI

__all__ = [
    "E2E_REDIS_URL",
    "POSTGRES_URL",
    "drop_postgres",
    "new_postgres_database",
    "postgres_database",
    "redis_database",
    "unreachable",
]

POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
# Database 13: no other test uses it (the integration tests use 0, with their own prefixes).
E2E_REDIS_URL = os.environ.get("TEST_E2E_REDIS_URL", "redis://127.0.0.1:6379/13")
_SERVER_KEYS = "shipway:counter:*"


def unreachable(what: str, reason: object) -> NoReturn:
    """Skip with the reason; on CI (CI=true) fail instead: a green CI must mean it ran."""
    message = f"{what} is not reachable ({reason})"
    if ON_CI:
        pytest.fail(f"{message}; CI=true, so this test requires it", pytrace=False)
    pytest.skip(f"{message}; start it to run this test")


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(dsn=POSTGRES_URL, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def new_postgres_database() -> str:
    """A new, empty database on the test server; the caller drops it with `drop_postgres`."""
    name = f"shipway_test_{uuid.uuid4().hex[:16]}"
    try:
        asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        unreachable(f"PostgreSQL at {make_url(POSTGRES_URL).render_as_string()}", repr(exc))
    return make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)


def drop_postgres(url: str) -> None:
    name = make_url(url).database
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextmanager
def postgres_database() -> Iterator[str]:
    """The URL of a new, empty database on the test server, dropped on exit."""
    url = new_postgres_database()
    try:
        yield url
    finally:
        drop_postgres(url)


def _delete_server_keys(client: redis.Redis) -> None:
    keys = list(client.scan_iter(match=_SERVER_KEYS, count=1000))
    if keys:
        client.delete(*keys)


@contextmanager
def redis_database() -> Iterator[tuple[str, redis.Redis]]:
    """(URL, client) of the e2e Redis database, emptied of server counters before and after."""
    client = redis.Redis.from_url(E2E_REDIS_URL, socket_connect_timeout=2, socket_timeout=5)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        client.close()
        unreachable(f"Redis at {E2E_REDIS_URL}", repr(exc))
    try:
        _delete_server_keys(client)
        yield E2E_REDIS_URL, client
    finally:
        _delete_server_keys(client)
        client.close()
