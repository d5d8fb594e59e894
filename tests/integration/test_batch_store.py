"""The batch store on SQLite and real PostgreSQL: leases, exactly-once answers, the end of a
batch and who sees what."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest

from shipway.batches.finalize import finish
from shipway.errors import Conflict
from shipway.store import Database, keys
from shipway.store import batches as store
from shipway.store.batch_files import Viewer, create_file, file_content, get_file, list_files

NOW = datetime(2030, 1, 1, tzinfo=UTC)
ANYONE = Viewer(None)


def _ok(text: str) -> store.LineOutcome:
    body = {"choices": [{"message": {"content": text}}]}
    return store.LineOutcome(
        True, {"status_code": 200, "request_id": text, "body": body}, None, 3, 2
    )


async def _batch(database: Database, lines: int, owner: int | None = None) -> str:
    async with database.transaction() as session:
        batch = await store.create_batch(
            session,
            owner_key_id=owner,
            endpoint="/v1/chat/completions",
            input_file_id="file-x",
            completion_window="24h",
            meta={"job": "test"},
            lines=[
                store.NewLine(i + 1, f"c{i + 1}", "m", {"model": "m", "messages": []})
                for i in range(lines)
            ],
            at=NOW,
            expires_at=NOW + timedelta(hours=24),
        )
    return batch.id


async def _claim(
    database: Database, batch_id: str, owner: str, limit: int, at: datetime = NOW
) -> list[int]:
    async with database.transaction() as session:
        claimed = await store.claim_lines(
            session, batch_id, owner=owner, now=at, until=at + timedelta(seconds=60), limit=limit
        )
    return [line.line_no for line in claimed]


async def _record(
    database: Database, batch_id: str, line_no: int, outcome: store.LineOutcome
) -> bool:
    async with database.transaction() as session:
        return await store.record_line(session, batch_id, line_no, outcome)


async def _get(database: Database, batch_id: str) -> store.BatchRecord:
    async with database.transaction() as session:
        batch = await store.get_batch(session, batch_id)
    assert batch is not None
    return batch


async def test_leased_lines_are_not_claimed_again_until_released_or_expired(
    database: Database,
) -> None:
    batch_id = await _batch(database, 5)
    assert await _claim(database, batch_id, "host/1/a", 2) == [1, 2]
    assert await _claim(database, batch_id, "host/2/b", 10) == [3, 4, 5]
    assert await _claim(database, batch_id, "host/3/c", 10) == []
    async with database.transaction() as session:
        assert set(await store.lease_owners(session)) == {"host/1/a", "host/2/b"}
        await store.release_leases(session, ["host/1/a"])
    assert await _claim(database, batch_id, "host/3/c", 10, NOW + timedelta(seconds=30)) == [1, 2]
    later = NOW + timedelta(seconds=61)  # host/2/b stopped renewing; host/3/c's run on
    assert await _claim(database, batch_id, "host/3/c", 10, at=later) == [3, 4, 5]


async def test_a_line_is_answered_once_and_counted_once(database: Database) -> None:
    batch_id = await _batch(database, 3)
    assert await _record(database, batch_id, 1, _ok("first"))
    assert not await _record(database, batch_id, 1, _ok("second"))  # a replica ran it too
    failed = store.LineOutcome(False, None, {"code": "x", "message": "no"})
    assert await _record(database, batch_id, 2, failed)
    batch = await _get(database, batch_id)
    assert (batch.completed, batch.failed, batch.input_tokens, batch.output_tokens) == (1, 1, 3, 2)
    assert await _claim(database, batch_id, "o", 10) == [3]
    async with database.transaction() as session:
        answered = await store.answered_lines(session, batch_id)
    assert [(a.line_no, a.status) for a in answered] == [(1, "done"), (2, "failed")]
    assert answered[0].response is not None and answered[0].response["request_id"] == "first"


async def test_a_finished_batch_has_its_files_in_line_order_and_takes_no_more_answers(
    database: Database,
) -> None:
    batch_id = await _batch(database, 4)
    for line_no in (3, 1, 4):
        assert await _record(database, batch_id, line_no, _ok(f"t{line_no}"))
    assert await _record(database, batch_id, 2, store.LineOutcome(False, None, {"code": "e"}))
    async with database.transaction() as session:
        assert await store.move(session, batch_id, ("in_progress",), "finalizing", NOW)
    assert await finish(database, batch_id, ("finalizing",), "completed", NOW)
    assert not await finish(database, batch_id, ("finalizing",), "completed", NOW)  # once
    batch = await _get(database, batch_id)
    assert batch.status == "completed" and batch.completed_at == NOW
    assert batch.output_file_id is not None and batch.error_file_id is not None
    async with database.transaction() as session:
        output = await file_content(session, batch.output_file_id, ANYONE)
        errors = await file_content(session, batch.error_file_id, ANYONE)
    assert output is not None and errors is not None
    rows = [orjson.loads(line) for line in output.splitlines()]
    assert [row["custom_id"] for row in rows] == ["c1", "c3", "c4"]
    assert [orjson.loads(line)["custom_id"] for line in errors.splitlines()] == ["c2"]
    assert not await _record(database, batch_id, 1, _ok("late"))


async def test_an_expired_batch_fails_its_pending_lines(database: Database) -> None:
    batch_id = await _batch(database, 3)
    assert await _record(database, batch_id, 1, _ok("t1"))
    assert await finish(database, batch_id, ("in_progress",), "expired", NOW)
    batch = await _get(database, batch_id)
    assert (batch.status, batch.completed, batch.failed) == ("expired", 1, 2)
    assert batch.error_file_id is not None
    async with database.transaction() as session:
        errors = await file_content(session, batch.error_file_id, ANYONE)
    assert errors is not None
    rows = [orjson.loads(line) for line in errors.splitlines()]
    assert [row["error"]["code"] for row in rows] == ["batch_expired"] * 2


async def test_cancel_moves_a_running_batch_only(database: Database) -> None:
    batch_id = await _batch(database, 2)
    async with database.transaction() as session:
        cancelling = await store.request_cancel(session, batch_id, ANYONE, NOW)
        assert cancelling is not None and cancelling.status == "cancelling"
        assert await store.request_cancel(session, "batch_nope", ANYONE, NOW) is None
    assert await finish(database, batch_id, ("cancelling",), "cancelled", NOW)
    with pytest.raises(Conflict, match="status 'cancelled'"):
        async with database.transaction() as session:
            await store.request_cancel(session, batch_id, ANYONE, NOW)


async def test_a_key_sees_its_own_files_and_batches_and_an_admin_all(database: Database) -> None:
    async with database.transaction() as session:
        alice = await keys.create_key(session, name="alice", key_hash="a" * 64, prefix="sw-a")
        bob = await keys.create_key(session, name="bob", key_hash="b" * 64, prefix="sw-b")
        made = [
            await create_file(
                session,
                owner_key_id=owner,
                purpose="batch",
                filename=f"{i}.jsonl",
                content=b"{}",
                at=NOW + timedelta(seconds=i),
            )
            for i, owner in enumerate([alice.id, bob.id, alice.id, alice.id])
        ]
    mine = [made[0].id, made[2].id, made[3].id]
    alices = Viewer(alice.id)
    async with database.transaction() as session:
        page, more = await list_files(session, alices, limit=2)
        assert [f.id for f in page] == [mine[2], mine[1]] and more
        page, more = await list_files(session, alices, limit=2, after=mine[1])
        assert [f.id for f in page] == [mine[0]] and not more
        page, _ = await list_files(session, alices, limit=10, order="asc")
        assert [f.id for f in page] == mine
        assert await get_file(session, made[1].id, alices) is None
        assert await get_file(session, made[1].id, Viewer(bob.id)) is not None
        assert await get_file(session, made[1].id, Viewer(alice.id, admin=True)) is not None
        assert await get_file(session, made[1].id, ANYONE) is None
    batch_id = await _batch(database, 1, owner=bob.id)
    async with database.transaction() as session:
        assert await store.get_batch(session, batch_id, alices) is None
        assert await store.request_cancel(session, batch_id, alices, NOW) is None
        listed, _ = await store.list_batches(session, Viewer(bob.id), limit=10)
        assert [b.id for b in listed] == [batch_id]
        listed, _ = await store.list_batches(session, alices, limit=10)
        assert listed == []
