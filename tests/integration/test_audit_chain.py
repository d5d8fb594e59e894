"""The audit chain on a real SQLite file and a real PostgreSQL database: written through
``AuditLog``, tampered with in raw SQL, and caught by ``verify`` naming the record."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text

from shipway.config import ShipwaySettings, load_settings
from shipway.errors import StoreUnavailable
from shipway.security.audit import AuditLog, decrypt_content
from shipway.security.audit_crypto import ContentKeys
from shipway.store import Database
from shipway.store.audit import ChainHead, VerifyReport, head, verify
from shipway.store.models import AuditRow

HMAC_KEY = "test-audit-hmac-key-0123456789"
ENV = {"SHIPWAY_AUDIT_KEY": HMAC_KEY}
DATA = {"model": "smollm2-135m", "status": 200, "pi": 3.25, "text": "héllo ✓", "n": [1, 2]}


def settings_for(url: str, tmp_path: Path, **audit: Any) -> ShipwaySettings:
    audit = {"flush_interval_s": 0.02, **audit}
    return load_settings(None, {"data_dir": tmp_path, "database_url": url, "audit": audit})


async def write(
    database: Database, tmp_path: Path, count: int, *, first: int = 1, **audit: Any
) -> None:
    log = AuditLog(database, settings_for(database.url, tmp_path, **audit), ENV)
    await log.start()
    for i in range(first, first + count):
        log.record("request", principal=f"key:{i % 3}", request_id=f"r{i}", data={**DATA, "i": i})
    await log.stop()


async def check(database: Database, anchor: ChainHead | None = None) -> VerifyReport:
    async with database.transaction() as session:
        return await verify(session, HMAC_KEY.encode(), anchor)


async def tamper(database: Database, *statements: str, **params: Any) -> None:
    async with database.transaction() as session:
        for statement in statements:
            await session.execute(text(statement), params)


def json_param(database: Database) -> str:
    return "CAST(:value AS json)" if database.engine.dialect.name == "postgresql" else ":value"


async def test_an_untouched_log_verifies_and_keeps_its_data(
    database: Database, tmp_path: Path
) -> None:
    await write(database, tmp_path, 5)
    report = await check(database)
    assert report.ok and report.records == 5
    assert report.head is not None and report.head.seq == 5
    assert report.summary().startswith("5 records, chain intact up to seq 5 (hmac ")
    async with database.transaction() as session:
        rows = list(await session.scalars(select(AuditRow).order_by(AuditRow.seq)))
        assert await head(session) == report.head
    assert [row.seq for row in rows] == [1, 2, 3, 4, 5]
    assert [row.request_id for row in rows] == ["r1", "r2", "r3", "r4", "r5"]
    assert rows[2].data == {**DATA, "i": 3} and rows[2].principal == "key:0"
    assert rows[0].prev_hmac == "0" * 64
    assert all(b.prev_hmac == a.hmac for a, b in itertools.pairwise(rows))
    assert (await check(database, report.head)).ok


@pytest.mark.parametrize("column", ["data", "principal", "kind", "at"])
async def test_an_edited_record_is_named(database: Database, tmp_path: Path, column: str) -> None:
    await write(database, tmp_path, 5)
    if column == "data":
        value = json.dumps({**DATA, "i": 3, "status": 500})
        await tamper(
            database,
            f"UPDATE audit_log SET data = {json_param(database)} WHERE seq = 3",
            value=value,
        )
    elif column == "at":
        earlier = "(SELECT at FROM audit_log WHERE seq = 1)"
        await tamper(database, f"UPDATE audit_log SET at = {earlier} WHERE seq = 3")
    else:
        await tamper(database, f"UPDATE audit_log SET {column} = :value WHERE seq = 3", value="x")
    report = await check(database)
    assert (report.broken_seq, report.tampering, report.records) == (3, "edited", 2)
    assert report.summary().startswith("seq 3: edited: ")


async def test_a_deleted_record_is_named(database: Database, tmp_path: Path) -> None:
    await write(database, tmp_path, 5)
    await tamper(database, "DELETE FROM audit_log WHERE seq = 3")
    report = await check(database)
    assert (report.broken_seq, report.tampering, report.records) == (3, "deleted", 2)
    assert "records 3 are missing; next is seq 4" in report.detail


async def test_a_deleted_first_record_is_named(database: Database, tmp_path: Path) -> None:
    await write(database, tmp_path, 3)
    await tamper(database, "DELETE FROM audit_log WHERE seq IN (1, 2)")
    report = await check(database)
    assert (report.broken_seq, report.tampering) == (1, "deleted")
    assert "records 1-2 are missing" in report.detail


async def test_swapped_records_are_reported_as_reordered(
    database: Database, tmp_path: Path
) -> None:
    await write(database, tmp_path, 5)
    await tamper(
        database,
        "UPDATE audit_log SET seq = -1 WHERE seq = 3",
        "UPDATE audit_log SET seq = 3 WHERE seq = 4",
        "UPDATE audit_log SET seq = 4 WHERE seq = -1",
    )
    report = await check(database)
    assert (report.broken_seq, report.tampering, report.records) == (3, "reordered", 2)
    assert "written after the one now at seq 4" in report.detail


async def test_a_cut_tail_is_caught_only_with_an_anchor(database: Database, tmp_path: Path) -> None:
    await write(database, tmp_path, 5)
    anchor = (await check(database)).head
    assert anchor is not None
    await tamper(database, "DELETE FROM audit_log WHERE seq >= 4")
    # Without the anchor a shorter log is indistinguishable from one that was never longer.
    assert (await check(database)).ok
    report = await check(database, anchor)
    assert (report.broken_seq, report.tampering, report.records) == (4, "truncated", 3)
    assert "records 4-5 were cut from the end" in report.detail

    # The server goes on appending after the cut: the chain is whole again, but not the one
    # the anchor saw.
    await write(database, tmp_path, 3, first=6)
    assert (await check(database)).records == 6
    regrown = await check(database, anchor)
    assert (regrown.broken_seq, regrown.tampering) == (5, "truncated")


async def test_an_anchor_on_an_emptied_log_is_truncated(database: Database, tmp_path: Path) -> None:
    await write(database, tmp_path, 2)
    anchor = (await check(database)).head
    await tamper(database, "DELETE FROM audit_log")
    report = await check(database, anchor)
    assert (report.broken_seq, report.tampering) == (1, "truncated")


async def test_another_key_fails_at_the_first_record(database: Database, tmp_path: Path) -> None:
    await write(database, tmp_path, 2)
    async with database.transaction() as session:
        report = await verify(session, b"some-other-key-entirely-0123456")
    assert (report.broken_seq, report.tampering) == (1, "edited")
    assert "HMAC key" in report.detail


async def test_two_writers_appending_at_once_make_one_chain(
    database: Database, database_url: str, tmp_path: Path
) -> None:
    settings = settings_for(database_url, tmp_path)
    others = [Database(database_url), Database(database_url)]
    logs = [AuditLog(db, settings, ENV) for db in others]
    for db, log in zip(others, logs, strict=True):
        await db.start()
        await log.start()
    for round_ in range(8):
        for n, log in enumerate(logs):
            for i in range(25):
                log.record("request", principal=None, request_id=f"{n}-{round_}-{i}", data={})
        await asyncio.gather(*(log.flush() for log in logs))
    for db, log in zip(others, logs, strict=True):
        await log.stop()
        await db.stop()
    report = await check(database)
    assert report.ok and report.records == 400
    async with database.transaction() as session:
        ids = list(await session.scalars(select(AuditRow.request_id)))
    assert len(set(ids)) == 400


class FlakyDatabase(Database):
    """A real database that can be made to look unreachable."""

    down = False

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        if self.down:
            raise StoreUnavailable("down for the test")
        async with super().transaction() as session:
            yield session


async def test_records_wait_while_the_database_is_down_and_the_oldest_go_first(
    database: Database, database_url: str, tmp_path: Path
) -> None:
    flaky = FlakyDatabase(database_url)
    await flaky.start()
    log = AuditLog(flaky, settings_for(database_url, tmp_path), ENV, max_pending=5)
    await log.start()
    flaky.down = True
    for i in range(1, 9):
        log.record("request", principal=None, request_id=f"r{i}", data={"i": i})
    await asyncio.sleep(0.1)  # several flush rounds fail
    assert (log.pending, log.dropped) == (5, 3)
    with pytest.raises(StoreUnavailable):
        await log.flush()
    assert log.pending == 5
    flaky.down = False
    await log.stop()
    await flaky.stop()
    async with database.transaction() as session:
        ids = list(await session.scalars(select(AuditRow.request_id).order_by(AuditRow.seq)))
    assert ids == ["r4", "r5", "r6", "r7", "r8"]
    assert (await check(database)).ok


async def test_data_that_is_not_json_keeps_the_record(database: Database, tmp_path: Path) -> None:
    log = AuditLog(database, settings_for(database.url, tmp_path), ENV)
    await log.start()
    log.record("admin.team.create", principal="cli", request_id=None, data={"ids": {1: "x"}})
    log.record("request", principal="key:1", request_id="r", data={"big": 2**70})
    await log.stop()
    async with database.transaction() as session:
        rows = list(await session.scalars(select(AuditRow).order_by(AuditRow.seq)))
    assert [row.kind for row in rows] == ["admin.team.create", "request"]
    assert all("unrecordable" in row.data for row in rows)
    assert (await check(database)).ok


async def test_content_is_kept_encrypted_only_when_enabled(
    database: Database, tmp_path: Path
) -> None:
    content_key = base64.b64encode(os.urandom(32)).decode()
    env = {**ENV, "SHIPWAY_AUDIT_ENCRYPTION_KEYS": f"k2:{content_key}"}
    content = {"prompt": "the secret plan", "answer": "is safe"}
    for store_content in (True, False):
        settings = settings_for(database.url, tmp_path, store_content=store_content)
        log = AuditLog(database, settings, env)
        await log.start()
        log.record("request", principal="key:1", request_id="r" * 80, data=DATA, content=content)
        await log.stop()
    async with database.transaction() as session:
        raw = [
            row[0] for row in await session.execute(text("SELECT data FROM audit_log ORDER BY seq"))
        ]
        rows = list(await session.scalars(select(AuditRow).order_by(AuditRow.seq)))
    assert "secret plan" not in str(raw)
    sealed, plain = rows
    assert sealed.data["content"]["kid"] == "k2" and "content" not in plain.data
    assert len(sealed.request_id or "") == 64  # cut to the column, and the content bound to it
    columns = {c: getattr(sealed, c) for c in ("kind", "principal", "request_id", "at", "data")}
    keys = ContentKeys.from_environ(env, "SHIPWAY_AUDIT_ENCRYPTION_KEYS")
    assert decrypt_content(keys, columns) == content
    assert decrypt_content(keys, {**columns, "data": plain.data}) is None
    with pytest.raises(ValueError, match="another record"):
        decrypt_content(keys, {**columns, "principal": "key:2"})
    assert (await check(database)).ok


def shipway(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SHIPWAY_")}
    return subprocess.run(
        [sys.executable, "-m", "shipway", *args],
        cwd=cwd,
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_cli_verifies_anchors_and_names_the_tampered_record(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    settings = load_settings(None, {"data_dir": data_dir})

    async def setup() -> None:
        database = Database.from_settings(settings)
        await database.start()
        # No key in the environment: the log makes one in data_dir, where the CLI finds it.
        log = AuditLog(database, settings, {})
        await log.start()
        for i in range(4):
            log.record("request", principal="key:1", request_id=f"r{i}", data={"i": i})
        await log.stop()
        await database.stop()

    asyncio.run(setup())
    assert (data_dir / "audit-hmac.key").exists()
    intact = shipway("audit", "verify", "--data-dir", str(data_dir), cwd=tmp_path)
    assert intact.returncode == 0, intact.stderr
    assert "4 records, chain intact up to seq 4 (hmac " in intact.stdout
    anchor = tmp_path / "anchor.json"
    saved = shipway("audit", "anchor", "--data-dir", str(data_dir), "-o", str(anchor), cwd=tmp_path)
    assert saved.returncode == 0, saved.stderr
    assert '"seq": 4' in anchor.read_text() and '"seq": 4' in saved.stdout

    with sqlite3.connect(data_dir / "shipway.db") as conn:
        conn.execute("DELETE FROM audit_log WHERE seq = 4")
    cut = shipway(
        "audit", "verify", "--data-dir", str(data_dir), "--anchor", str(anchor), cwd=tmp_path
    )
    assert cut.returncode == 1
    assert "seq 4: truncated" in cut.stdout

    with sqlite3.connect(data_dir / "shipway.db") as conn:
        conn.execute("""UPDATE audit_log SET data = '{"i": 99}' WHERE seq = 2""")
    edited = shipway("audit", "verify", "--data-dir", str(data_dir), cwd=tmp_path)
    assert edited.returncode == 1
    assert "seq 2: edited" in edited.stdout and "Traceback" not in edited.stderr

    with sqlite3.connect(data_dir / "shipway.db") as conn:
        conn.execute("UPDATE audit_log SET at = 'yesterday' WHERE seq = 1")
    unreadable = shipway("audit", "verify", "--data-dir", str(data_dir), cwd=tmp_path)
    assert unreadable.returncode == 1
    assert "seq 1: edited: a value in it cannot be read" in unreadable.stdout

    empty = tmp_path / "elsewhere"
    missing = shipway("audit", "verify", "--data-dir", str(empty), cwd=tmp_path)
    assert missing.returncode == 2 and "no audit HMAC key" in missing.stderr
    assert not empty.exists()
