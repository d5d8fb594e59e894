"""The cost ledger: queued on the request path, written in batches, nothing lost on stop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from structlog.testing import capture_logs

from shipway.costs.attribution import CallCost, CostLedger
from shipway.errors import StoreUnavailable
from shipway.store import Database
from shipway.store.models import CallCostRow
from shipway.store.spend import SpendStore

NOW = datetime.now(UTC)


class FlakyDatabase(Database):
    """A real SQLite database that can be made to look unreachable."""

    down = False

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        if self.down:
            raise StoreUnavailable("down for the test")
        async with super().transaction() as session:
            yield session


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[FlakyDatabase]:
    db = FlakyDatabase(f"sqlite:///{tmp_path / 'shipway.db'}")
    await db.start()
    yield db
    await db.stop()


def cost(n: int, price: float = 0.5) -> CallCost:
    return CallCost(
        request_id=f"r{n}",
        at=NOW,
        key_id=1,
        key_name="app",
        team="search",
        user=None,
        tags=["ads"],
        model_requested="smollm2-135m",
        model_served="smollm2-135m",
        prompt_tokens=10,
        completion_tokens=2,
        cost=price,
    )


async def stored(database: Database) -> list[str]:
    async with database.transaction() as session:
        query = select(CallCostRow.request_id).order_by(CallCostRow.id)
        return list(await session.scalars(query))


async def test_the_writer_flushes_in_the_background(database: FlakyDatabase) -> None:
    ledger = CostLedger(SpendStore(database), flush_interval_s=0.01)
    await ledger.start()
    for n in range(1, 2501):  # more than one batch
        ledger.record(cost(n))
    # Watched from outside, as a reader of the database would (``pending`` reaches 0 while
    # the last batch is still being written).
    while len(ids := await stored(database)) < 2500:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    assert ledger.pending == 0
    assert ids == [f"r{n}" for n in range(1, 2501)]
    await ledger.stop()
    report = await SpendStore(database).report("tag", NOW - timedelta(minutes=1))
    assert [(line.group, line.requests, line.cost) for line in report] == [("ads", 2500, 1250.0)]


async def test_stop_writes_what_is_left(database: FlakyDatabase) -> None:
    ledger = CostLedger(SpendStore(database), flush_interval_s=3600)
    await ledger.start()
    for n in range(3):
        ledger.record(cost(n))
    assert await stored(database) == []
    await ledger.stop()
    assert ledger.pending == 0
    assert await stored(database) == ["r0", "r1", "r2"]


async def test_the_queue_is_bounded_and_drops_the_oldest(database: FlakyDatabase) -> None:
    ledger = CostLedger(SpendStore(database), flush_interval_s=0.01, max_pending=5)
    await ledger.start()
    database.down = True
    for n in range(1, 9):
        ledger.record(cost(n))
    assert (ledger.pending, ledger.dropped) == (5, 3)
    await asyncio.sleep(0.05)  # several flush rounds fail; nothing more is lost
    with pytest.raises(StoreUnavailable):
        await ledger.flush()
    assert (ledger.pending, ledger.dropped) == (5, 3)
    database.down = False
    await ledger.stop()
    assert await stored(database) == ["r4", "r5", "r6", "r7", "r8"]


async def test_stop_while_the_database_is_down_logs_the_loss(database: FlakyDatabase) -> None:
    ledger = CostLedger(SpendStore(database), flush_interval_s=3600)
    await ledger.start()
    ledger.record(cost(1))
    database.down = True
    with capture_logs() as logs:
        await ledger.stop()  # does not raise
    assert ledger.pending == 1
    assert [(log["event"], log["lost"]) for log in logs] == [
        ("request costs lost at shutdown: the database cannot be written", 1)
    ]


async def test_refused_rows_do_not_hold_back_the_rest(database: FlakyDatabase) -> None:
    ledger = CostLedger(SpendStore(database), flush_interval_s=3600)
    ledger.record(replace(cost(1), at=datetime(2026, 1, 1)))  # naive: refused
    with capture_logs() as logs:
        await ledger.flush()
    assert [log["event"] for log in logs] == ["request costs refused by the database; dropped"]
    assert (ledger.pending, ledger.dropped) == (0, 1)
    ledger.record(cost(2))
    await ledger.stop()
    assert await stored(database) == ["r2"]
