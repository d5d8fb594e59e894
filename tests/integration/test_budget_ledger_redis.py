"""The budget ledger's contract on both implementations (in-process and real Redis), and
budgets shared by two replicas through one real Redis: exact under a race, one command per
reserve and per settle, counters that expire after their window."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis.asyncio as aioredis

from shipway.config import ShipwaySettings
from shipway.costs.budgets import BudgetReservation, BudgetScopeKey, BudgetService
from shipway.errors import BudgetExceeded
from shipway.store.budget_ledger import BudgetLedger, LedgerKey, MemoryBudgetLedger, ReserveItem
from shipway.store.redis_budget_ledger import RedisBudgetLedger

# A fixed instant years ahead: no calendar boundary falls inside a test, and every counter's
# expiry is in the future for the real Redis clock. 12:00 in Paris, 30 November 2030.
NOON = datetime(2030, 11, 30, 11, tzinfo=UTC).timestamp()
LATER = int(time.time()) + 3600


def clock() -> float:
    return NOON


def key(name: str, expires_at: int = LATER) -> LedgerKey:
    return LedgerKey(name, "2030-11-30", expires_at)


@pytest.fixture
async def prefix(redis_url: str) -> AsyncIterator[str]:
    prefix = f"shipway-test:{uuid.uuid4().hex}:"
    yield prefix
    client = aioredis.Redis.from_url(redis_url)
    keys = [k async for k in client.scan_iter(match=prefix + "*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
async def replicas(redis_url: str, prefix: str) -> AsyncIterator[list[RedisBudgetLedger]]:
    """Two ledgers with their own connections, as two replicas have."""
    ledgers = [RedisBudgetLedger.from_url(redis_url, prefix=prefix) for _ in range(2)]
    for ledger in ledgers:
        await ledger.start()
    yield ledgers
    for ledger in ledgers:
        await ledger.close()


@pytest.fixture(params=["memory", "redis"])
def ledger(request: pytest.FixtureRequest) -> BudgetLedger:
    if request.param == "memory":
        return MemoryBudgetLedger()
    ledgers: list[RedisBudgetLedger] = request.getfixturevalue("replicas")
    return ledgers[0]


# -- the ledger contract ---------------------------------------------------------------------


async def test_a_reservation_counts_all_its_items_or_none(ledger: BudgetLedger) -> None:
    a, b = key("a"), key("b")
    refused = await ledger.reserve([ReserveItem(a, 4, 10), ReserveItem(b, 6, 5)])
    assert (refused.allowed, refused.fits, refused.totals) == (False, (True, False), (0, 0))
    assert await ledger.read([a, b]) == [0, 0]
    taken = await ledger.reserve([ReserveItem(a, 4, 10), ReserveItem(b, 5, 5)])
    assert (taken.allowed, taken.totals) == (True, (4, 5))
    unlimited = await ledger.reserve([ReserveItem(b, 10**6, None)])
    assert unlimited.allowed and unlimited.totals == (10**6 + 5,)


async def test_adjust_corrects_never_below_zero_and_creates_only_on_spend(
    ledger: BudgetLedger,
) -> None:
    a, b, c = key("a"), key("b"), key("c")
    await ledger.reserve([ReserveItem(a, 3, 10)])
    assert await ledger.adjust([(a, -5), (b, 7), (c, -2)]) == [0, 7, 0]
    assert await ledger.read([a, b, c]) == [0, 7, 0]
    assert await ledger.seed(c, 4)  # a refund never created c, so the seed applies


async def test_seed_sets_a_counter_only_if_it_does_not_exist(ledger: BudgetLedger) -> None:
    a = key("a")
    assert await ledger.seed(a, 7)
    assert not await ledger.seed(a, 9)
    await ledger.adjust([(a, 1)])
    assert not await ledger.seed(a, 0)
    assert await ledger.read([a]) == [8]


async def test_large_amounts_stay_exact(ledger: BudgetLedger) -> None:
    a = key("a")
    big = 2**52  # 4.5 million currency units in nano-units
    await ledger.reserve([ReserveItem(a, big, 2**53)])
    assert await ledger.adjust([(a, 1)]) == [big + 1]
    assert await ledger.read([a]) == [big + 1]


async def test_a_counter_past_its_expiry_is_gone(ledger: BudgetLedger) -> None:
    gone = key("gone", expires_at=int(time.time()) - 1)
    await ledger.reserve([ReserveItem(gone, 5, 10)])
    await ledger.adjust([(gone, 3)])
    assert await ledger.read([gone]) == [0]


async def test_keys_must_be_distinct(ledger: BudgetLedger) -> None:
    with pytest.raises(ValueError, match="distinct"):
        await ledger.reserve([ReserveItem(key("a"), 1, 5), ReserveItem(key("a"), 1, 5)])


# -- budgets across two replicas -----------------------------------------------------------------


def settings(**rule: Any) -> ShipwaySettings:
    upstream = {"backend": "openai", "base_url": "http://127.0.0.1:9/v1"}
    return ShipwaySettings(
        embedded_models=False,
        models={"big": upstream},
        budgets={
            "timezone": "Europe/Paris",
            "rules": [{"name": "team-daily", "scope": "team", "window": "day", **rule}],
        },
    )


def services(ledgers: list[RedisBudgetLedger], **rule: Any) -> list[BudgetService]:
    return [BudgetService(settings(**rule), ledger, clock=clock) for ledger in ledgers]


async def reserve(budgets: BudgetService, cost: float) -> BudgetReservation:
    return await budgets.reserve(
        key_name="alice", key_id=7, team="ml", tags=(), model="big", max_cost=cost
    )


async def spent(budgets: BudgetService) -> float:
    (status,) = await budgets.status(team="ml")
    return status.spent


async def test_50_concurrent_requests_across_two_replicas_overspend_by_at_most_one(
    replicas: list[RedisBudgetLedger],
) -> None:
    pair = services(replicas, hard_limit=5.0)

    async def one(i: int) -> bool:
        try:
            held = await reserve(pair[i % 2], 1.0)
        except BudgetExceeded:
            return False
        await asyncio.sleep(0)
        await held.settle(1.0)
        return True

    admitted = sum(await asyncio.gather(*(one(i) for i in range(50))))
    assert 5 <= admitted <= 6 and await spent(pair[0]) <= 6.0
    assert admitted == 5 and await spent(pair[1]) == 5.0  # reserving the maximum: exact


async def test_one_replica_refuses_what_the_other_spent(replicas: list[RedisBudgetLedger]) -> None:
    first, second = services(replicas, hard_limit=1.0)
    await (await reserve(first, 0.7)).settle(0.7)
    with pytest.raises(BudgetExceeded) as refused:
        await reserve(second, 0.5)
    assert refused.value.code == "budget_exceeded"
    assert refused.value.retry_after == 12 * 3600
    assert "0.70 of 1.00 USD" in refused.value.message


async def test_a_restarted_replica_seeds_only_a_counter_nobody_keeps(
    replicas: list[RedisBudgetLedger], prefix: str, redis_url: str
) -> None:
    async def recorded(scope: BudgetScopeKey, window_start: float) -> float:
        return 0.4

    live = services(replicas, hard_limit=1.0)[0]
    await (await reserve(live, 0.7)).settle(0.7)
    restarted = BudgetService(
        settings(hard_limit=1.0), replicas[1], clock=clock, seed_spend=recorded
    )
    assert await spent(restarted) == 0.7  # the live counter wins over the lagging database
    client = aioredis.Redis.from_url(redis_url)
    await client.delete(*[k async for k in client.scan_iter(match=prefix + "*")])
    await client.aclose()
    fresh = BudgetService(settings(hard_limit=1.0), replicas[1], clock=clock, seed_spend=recorded)
    assert await spent(fresh) == 0.4  # Redis lost it: the recorded spend is not forgotten


async def test_a_reserve_and_its_settle_are_one_redis_command_each(
    replicas: list[RedisBudgetLedger],
) -> None:
    ledger = replicas[0]
    client = ledger._client
    real = client.execute_command
    commands: list[object] = []

    async def counted(*args: Any, **options: Any) -> Any:
        commands.append(args[0])
        return await real(*args, **options)  # type: ignore[no-untyped-call]

    client.execute_command = counted  # type: ignore[method-assign]
    try:
        budgets = BudgetService(settings(hard_limit=5.0, soft_limit=4.0), ledger, clock=clock)
        held = await reserve(budgets, 1.0)
        assert commands == ["EVALSHA"]
        await held.settle(0.5)
        assert commands == ["EVALSHA", "EVALSHA"]
        await client.script_flush()  # a Redis that lost its scripts gets them again
        commands.clear()
        await (await reserve(budgets, 1.0)).settle(1.0)
        assert commands == ["EVALSHA", "SCRIPT LOAD", "EVALSHA"] * 2
    finally:
        client.execute_command = real  # type: ignore[method-assign]


async def test_counters_expire_an_hour_after_their_window_ends(
    replicas: list[RedisBudgetLedger], prefix: str, redis_url: str
) -> None:
    budgets = services(replicas, hard_limit=5.0)[0]
    await (await reserve(budgets, 1.0)).settle(1.0)
    client = aioredis.Redis.from_url(redis_url)
    (name,) = [k async for k in client.scan_iter(match=prefix + "*")]
    assert name.decode() == f"{prefix}team-daily:team:ml|2030-11-30"
    midnight = datetime(2030, 11, 30, 23, tzinfo=UTC).timestamp()  # 1 December in Paris
    assert await client.expiretime(name) == math.ceil(midnight + 3600)
    await client.aclose()
