"""The database store, the same tests against SQLite (a temp file) and real PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect, text
from sqlalchemy.exc import IntegrityError, StatementError

from shipway.errors import Conflict, NotFound, StoreUnavailable
from shipway.store import Database, keys, teams
from shipway.store.migrate import head_revision
from shipway.store.models import AuditRow, Base


def _schema_diff(connection: Connection) -> list[object]:
    return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))


async def test_start_migrates_to_the_newest_schema_and_is_idempotent(database: Database) -> None:
    assert await database.revision() == head_revision()
    async with database.engine.connect() as conn:
        tables = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
        assert {"teams", "api_keys", "audit_log", "alembic_version"} <= tables
        # The models and the migrations describe the same schema.
        assert await conn.run_sync(_schema_diff) == []
    await database.upgrade()
    again = Database(database.url)
    await again.start()
    assert await again.revision() == head_revision()
    await again.stop()


async def test_a_schema_from_a_newer_version_is_refused(database: Database) -> None:
    async with database.transaction() as session:
        await session.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    newer = Database(database.url)
    with pytest.raises(StoreUnavailable, match="newer Shipway"):
        await newer.start()
    async with database.transaction() as session:
        await session.execute(text(f"UPDATE alembic_version SET version_num = '{head_revision()}'"))


async def test_teams_are_created_listed_and_unique(database: Database) -> None:
    async with database.transaction() as session:
        team = await teams.create_team(session, "search", models=["smollm2-135m"], rpm=60)
    assert team.name == "search" and team.models == ("smollm2-135m",) and team.rpm == 60
    assert team.created_at.tzinfo is UTC
    with pytest.raises(Conflict, match="exists already"):
        async with database.transaction() as session:
            await teams.create_team(session, "search")
    async with database.transaction() as session:
        assert await teams.get_team(session, "search") == team
        assert await teams.get_team(session, "nobody") is None
        await teams.create_team(session, "ads")
        assert [t.name for t in await teams.list_teams(session)] == ["search", "ads"]


async def test_a_failed_transaction_leaves_nothing_behind(database: Database) -> None:
    with pytest.raises(Conflict):
        async with database.transaction() as session:
            await teams.create_team(session, "first")
            await teams.create_team(session, "first")
    async with database.transaction() as session:
        assert await teams.list_teams(session) == []


async def test_keys_are_found_by_hash_with_their_rights(database: Database) -> None:
    expires = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    async with database.transaction() as session:
        assert not await keys.has_keys(session)
        team = await teams.create_team(session, "search")
        admin = await keys.create_key(
            session, name="ops", key_hash="a" * 64, prefix="sw-aaaa", admin=True
        )
        key = await keys.create_key(
            session,
            name="app",
            key_hash="b" * 64,
            prefix="sw-bbbb",
            team_id=team.id,
            models=["smollm2-135m", "all-minilm-l6-v2"],
            rpm=10,
            tpm=1000,
            created_by=admin.id,
            expires_at=expires,
        )
    async with database.transaction() as session:
        assert await keys.has_keys(session)
        found = await keys.get_key_by_hash(session, "b" * 64)
        assert found == key
        assert await keys.get_key(session, key.id) == key
        assert await keys.get_key_by_hash(session, "c" * 64) is None
    assert found is not None
    assert found.team_id == team.id and found.created_by == admin.id
    assert found.models == ("smollm2-135m", "all-minilm-l6-v2")
    assert (found.rpm, found.tpm, found.admin) == (10, 1000, False)
    assert found.expires_at == expires and found.expires_at.tzinfo is UTC
    assert found.usable(datetime(2029, 1, 1, tzinfo=UTC))
    assert not found.usable(datetime(2031, 1, 1, tzinfo=UTC))
    assert admin.admin and admin.models is None and admin.team_id is None


async def test_a_hash_is_stored_once_and_a_team_must_exist(database: Database) -> None:
    async with database.transaction() as session:
        await keys.create_key(session, name="one", key_hash="d" * 64, prefix="sw-dddd")
    with pytest.raises(Conflict):
        async with database.transaction() as session:
            await keys.create_key(session, name="two", key_hash="d" * 64, prefix="sw-dddd")
    with pytest.raises(NotFound):
        async with database.transaction() as session:
            await keys.create_key(session, name="x", key_hash="e" * 64, prefix="sw", team_id=999)


async def test_revoking_is_recorded_once_and_listing_can_hide_it(database: Database) -> None:
    async with database.transaction() as session:
        team = await teams.create_team(session, "t")
        kept = await keys.create_key(
            session, name="k", key_hash="1" * 64, prefix="sw-1", team_id=team.id
        )
        gone = await keys.create_key(session, name="g", key_hash="2" * 64, prefix="sw-2")
    first = datetime(2026, 1, 1, tzinfo=UTC)
    async with database.transaction() as session:
        revoked = await keys.revoke_key(session, gone.id, at=first)
        assert revoked is not None and revoked.revoked_at == first
        assert not revoked.usable(datetime.now(UTC))
        again = await keys.revoke_key(session, gone.id)
        assert again is not None and again.revoked_at == first
        assert await keys.revoke_key(session, 12345) is None
    async with database.transaction() as session:
        assert [k.id for k in await keys.list_keys(session)] == [kept.id, gone.id]
        assert [k.id for k in await keys.list_keys(session, include_revoked=False)] == [kept.id]
        assert [k.id for k in await keys.list_keys(session, team_id=team.id)] == [kept.id]


async def test_times_must_carry_a_timezone(database: Database) -> None:
    with pytest.raises(StatementError, match="timezone-aware"):
        async with database.transaction() as session:
            await keys.create_key(
                session, name="n", key_hash="f" * 64, prefix="sw", expires_at=datetime(2030, 1, 1)
            )


async def test_audit_records_keep_their_data_and_cannot_fork(database: Database) -> None:
    at = datetime.now(UTC)
    data = {"model": "smollm2-135m", "tokens": 12, "nested": {"ok": True, "pi": 3.25}}
    row = dict(at=at, kind="request", principal="key:1", request_id="r1", prev_hmac="0" * 64)
    async with database.transaction() as session:
        session.add(AuditRow(seq=2**40, data=data, hmac="a" * 64, **row))
    async with database.transaction() as session:
        stored = await session.get(AuditRow, 2**40)
        assert stored is not None and stored.data == data and stored.at == at
    # Two writers appending the same sequence number: the second fails, the chain cannot fork.
    with pytest.raises(IntegrityError):
        async with database.transaction() as session:
            session.add(AuditRow(seq=2**40, data={}, hmac="b" * 64, **row))


async def test_replicas_starting_together_migrate_once(empty_database_url: str) -> None:
    databases = [Database(empty_database_url) for _ in range(4)]
    await asyncio.gather(*(db.start() for db in databases))
    for db in databases:
        assert await db.revision() == head_revision()
        await db.stop()


async def test_an_unreachable_database_says_which_and_how_to_fix_it() -> None:
    db = Database("postgresql://shipway:secret-pw@127.0.0.1:1/nothing")
    with pytest.raises(StoreUnavailable) as caught:
        await db.start()
    message = str(caught.value)
    assert "127.0.0.1:1" in message and "SHIPWAY_DATABASE_URL" in message
    assert "secret-pw" not in message
