"""Spend budgets over the in-process ledger and an injected clock: which rules apply, refusals
(429 with Retry-After), fallbacks, soft-limit notices, settling, concurrency, calendar resets
and seeding from the recorded spend."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime
from typing import Any

import pytest
from structlog.testing import capture_logs

from shipway.api.errors import error_response
from shipway.config import ShipwaySettings
from shipway.costs.budgets import NO_BUDGET, BudgetReservation, BudgetScopeKey, BudgetService
from shipway.errors import BudgetExceeded, StoreUnavailable
from shipway.store.budget_ledger import BudgetLedger, MemoryBudgetLedger
from shipway.store.redis_budget_ledger import RedisBudgetLedger


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


NOON = utc(2026, 11, 30, 11)  # 12:00 in Paris, 30 November 2026
MIDNIGHT = utc(2026, 11, 30, 23)  # 00:00 in Paris, 1 December


class Clock:
    def __init__(self, now: float = NOON) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def settings(*rules: dict[str, Any], currency: str = "USD") -> ShipwaySettings:
    upstream = {"backend": "openai", "base_url": "http://127.0.0.1:9/v1"}
    return ShipwaySettings(
        embedded_models=False,
        models={"big": upstream, "small": upstream},
        budgets={"timezone": "Europe/Paris", "rules": list(rules)},
        telemetry={"currency": currency},
    )


def team_rule(name: str = "team-daily", **fields: Any) -> dict[str, Any]:
    return {"name": name, "scope": "team", "window": "day", **fields}


def service(
    *rules: dict[str, Any],
    clock: Clock | None = None,
    ledger: BudgetLedger | None = None,
    **options: Any,
) -> BudgetService:
    clock = clock or Clock()
    return BudgetService(
        settings(*rules), ledger or MemoryBudgetLedger(clock), clock=clock, **options
    )


async def reserve(
    budgets: BudgetService,
    cost: float,
    *,
    team: str | None = "ml",
    key: tuple[str, int] | None = ("alice", 7),
    tags: tuple[str, ...] = (),
    model: str = "big",
) -> BudgetReservation:
    return await budgets.reserve(
        key_name=None if key is None else key[0],
        key_id=None if key is None else key[1],
        team=team,
        tags=tags,
        model=model,
        max_cost=cost,
    )


async def spent(budgets: BudgetService, team: str = "ml") -> float:
    (status,) = await budgets.status(team=team)
    return status.spent


async def test_rules_apply_by_scope_match_and_model() -> None:
    budgets = service(
        {"name": "alice", "scope": "key", "match": ["alice"], "window": "day", "hard_limit": 9},
        {"name": "teams", "scope": "team", "window": "month", "hard_limit": 9},
        {"name": "tags", "scope": "tag", "match": ["search", "chat"], "window": "day",
         "soft_limit": 9},
        team_rule("big-only", models=["big"], hard_limit=9),
    )  # fmt: skip
    first = await reserve(budgets, 1, tags=("search", "other", "search"))
    assert sorted(first.budgets) == [
        "alice:key:7",  # a key's budget is its id's: names may be reused
        "big-only:team:ml",
        "tags:tag:search",
        "teams:team:ml",
    ]
    second = await reserve(budgets, 1, team="ops", key=("bob", 8), model="small")
    assert second.budgets == ["teams:team:ops"]  # each team its own budget; "small" not capped
    await first.settle(0.25)
    await second.settle(0.5)
    month = {s.rule: s.spent for s in await budgets.status(team="ml")}
    assert month == {"teams": 0.25, "big-only": 0.25}
    ops = {(s.rule, s.window, s.spent) for s in await budgets.status(team="ops")}
    assert ops == {("teams", "2026-11", 0.5), ("big-only", "2026-11-30", 0.0)}
    assert await reserve(budgets, 1, team=None, key=None, tags=("other",)) is NO_BUDGET


async def test_a_hard_limit_rejects_with_429_naming_the_budget_and_when_it_resets() -> None:
    budgets = service(team_rule(hard_limit=1.0))
    await (await reserve(budgets, 0.6)).settle(0.6)
    with pytest.raises(BudgetExceeded) as refused:
        await reserve(budgets, 0.6)
    error = refused.value
    assert (error.status, error.code, error.type) == (429, "budget_exceeded", "insufficient_quota")
    assert error.retry_after == 12 * 3600  # noon to midnight in Paris
    assert error_response(error).headers["retry-after"] == "43200"
    for part in ("'team-daily'", "team 'ml'", "day 2026-11-30", "0.60 of 1.00 USD",
                 "resets at 2026-12-01 00:00 Europe/Paris", "in 12h00m"):  # fmt: skip
        assert part in error.message
    assert await spent(budgets) == 0.6  # a refusal counts nothing
    await (await reserve(budgets, 0.4)).settle(0.4)  # exactly up to the limit still fits
    assert await spent(budgets) == 1.0


async def test_a_request_dearer_than_the_whole_budget_gets_no_retry_after() -> None:
    budgets = service(team_rule(hard_limit=1.0))
    with pytest.raises(BudgetExceeded) as refused:
        await reserve(budgets, 1.5)
    assert refused.value.retry_after is None
    assert "more than the budget's whole limit of 1.00 USD" in refused.value.message


async def test_a_fallback_rule_names_the_cheaper_model_and_does_not_cap_it() -> None:
    budgets = service(
        team_rule("big-cap", hard_limit=1.0, on_exceeded="fallback", fallback_model="small",
                  models=["big"]),
    )  # fmt: skip
    await (await reserve(budgets, 1.0)).settle(1.0)
    moved = await reserve(budgets, 0.5)
    assert (moved.fallback_model, moved.rule) == ("small", "big-cap")
    assert moved.budgets == []
    await moved.settle(0.5)  # holds nothing: nothing to correct
    assert await reserve(budgets, 0.5, model="small") is NO_BUDGET
    assert await spent(budgets) == 1.0


async def test_a_fallback_rule_that_catches_its_own_fallback_rejects_it() -> None:
    budgets = service(team_rule(hard_limit=1.0, on_exceeded="fallback", fallback_model="small"))
    await (await reserve(budgets, 1.0)).settle(1.0)
    assert (await reserve(budgets, 0.5)).fallback_model == "small"
    with pytest.raises(BudgetExceeded, match="fallback model 'small' is over it too"):
        await reserve(budgets, 0.1, model="small")


async def test_a_rejecting_rule_wins_over_a_fallback_rule() -> None:
    budgets = service(
        team_rule("cheap", hard_limit=1.0, on_exceeded="fallback", fallback_model="small"),
        team_rule("strict", hard_limit=1.0),
    )
    await (await reserve(budgets, 1.0)).settle(1.0)
    with pytest.raises(BudgetExceeded, match="'strict'"):
        await reserve(budgets, 0.5)


async def test_settle_corrects_the_reservation_once_and_zero_releases_it() -> None:
    budgets = service(team_rule(hard_limit=1.0))
    held = await reserve(budgets, 0.8)
    assert await spent(budgets) == 0.8  # the maximum is held while the call runs
    await held.settle(0.3)
    await held.settle(0.9)  # a second settle changes nothing
    assert await spent(budgets) == 0.3
    await (await reserve(budgets, 0.5)).settle(0)
    assert await spent(budgets) == 0.3
    over = await reserve(budgets, 0.7)
    await over.settle(1.2)  # dearer than reserved: over the limit after the fact
    assert await spent(budgets) == 1.5
    with pytest.raises(BudgetExceeded):
        await reserve(budgets, 0.01)


async def test_spend_is_counted_exactly_in_nano_units() -> None:
    budgets = service(team_rule(hard_limit=1.0))
    for _ in range(10):  # ten times 0.1 is 0.9999999999999999 in floats
        await (await reserve(budgets, 0.1)).settle(0.1)
    assert await spent(budgets) == 1.0
    with pytest.raises(BudgetExceeded):
        await reserve(budgets, 1e-9)
    assert await reserve(budgets, 0.0) is not NO_BUDGET  # a free call still fits


async def test_a_soft_limit_notifies_once_per_window() -> None:
    clock = Clock()
    events: list[dict[str, Any]] = []
    budgets = service(team_rule(soft_limit=1.0), clock=clock, notify=events.append)
    with capture_logs() as logs:
        for _ in range(4):
            await (await reserve(budgets, 0.6)).settle(0.6)
    assert len(events) == 1
    event = events[0]
    assert (event["rule"], event["scope"], event["value"], event["window"]) == (
        "team-daily", "team", "ml", "2026-11-30",
    )  # fmt: skip
    assert (event["spent"], event["soft_limit"], event["currency"]) == (1.2, 1.0, "USD")
    assert "soft limit of 1.00" in event["message"]
    assert [log["log_level"] for log in logs if log["event"] == "budget_soft_limit"] == ["warning"]
    clock.now = MIDNIGHT + 60
    for _ in range(2):
        await (await reserve(budgets, 0.6)).settle(0.6)
    assert [e["window"] for e in events] == ["2026-11-30", "2026-12-01"]


async def test_the_soft_limit_is_judged_after_settling_and_a_failing_sink_is_contained() -> None:
    calls: list[dict[str, Any]] = []

    def broken(event: dict[str, Any]) -> None:
        calls.append(event)
        raise RuntimeError("webhook down")

    budgets = service(team_rule(soft_limit=0.5, hard_limit=2.0), notify=broken)
    await (await reserve(budgets, 1.0)).settle(0.4)  # held 1.0 on the way, settled at 0.4
    assert calls == []
    await (await reserve(budgets, 1.0)).settle(0.2)
    assert len(calls) == 1 and calls[0]["spent"] == 0.6
    await (await reserve(budgets, 1.0)).settle(0.2)
    assert len(calls) == 1


async def test_50_concurrent_requests_against_a_budget_worth_five_overspend_by_at_most_one() -> (
    None
):
    budgets = service(team_rule(hard_limit=5.0))

    async def one() -> bool:
        try:
            held = await reserve(budgets, 1.0)
        except BudgetExceeded:
            return False
        await asyncio.sleep(0)
        await held.settle(1.0)
        return True

    admitted = sum(await asyncio.gather(*(one() for _ in range(50))))
    assert 5 <= admitted <= 6
    assert await spent(budgets) <= 6.0
    assert admitted == 5 and await spent(budgets) == 5.0  # reserving the maximum: exact


async def test_interleaved_requests_cheaper_than_reserved_never_overspend() -> None:
    budgets = service(team_rule(hard_limit=5.0))
    rng = random.Random(12)

    async def one(delay: int, cost: float) -> bool:
        for _ in range(delay):
            await asyncio.sleep(0)
        try:
            held = await reserve(budgets, 1.0)
        except BudgetExceeded:
            return False
        await asyncio.sleep(0)
        await held.settle(cost)
        return True

    runs = [one(rng.randrange(6), rng.choice([0.25, 0.5, 1.0])) for _ in range(50)]
    admitted = sum(await asyncio.gather(*runs))
    assert admitted > 5  # headroom freed by cheap calls is reused
    assert await spent(budgets) <= 5.0


async def test_the_budget_resets_at_the_calendar_boundary() -> None:
    clock = Clock(MIDNIGHT - 10)  # 23:59:50 in Paris
    budgets = service(team_rule(hard_limit=1.0), clock=clock)
    late = await reserve(budgets, 0.5)
    await (await reserve(budgets, 0.5)).settle(0.5)
    with pytest.raises(BudgetExceeded) as refused:
        await reserve(budgets, 0.1)
    assert refused.value.retry_after == 10
    clock.now = MIDNIGHT
    fresh = await reserve(budgets, 1.0)  # a new day: the whole budget again
    await late.settle(0.2)  # settles into the day it reserved in
    assert [(s.window, s.spent) for s in await budgets.status(team="ml")] == [("2026-12-01", 1.0)]
    await fresh.settle(1.0)
    clock.now = MIDNIGHT - 1
    assert [(s.window, s.spent) for s in await budgets.status(team="ml")] == [("2026-11-30", 0.7)]


async def test_the_first_use_in_a_window_seeds_the_budget_from_the_recorded_spend() -> None:
    clock = Clock()
    asked: list[tuple[BudgetScopeKey, float]] = []

    async def recorded(scope: BudgetScopeKey, window_start: float) -> float:
        asked.append((scope, window_start))
        await asyncio.sleep(0)  # a database query
        return 0.8

    budgets = service(team_rule(hard_limit=1.0), clock=clock, seed_spend=recorded)
    outcomes = await asyncio.gather(
        *(reserve(budgets, 0.1) for _ in range(10)), return_exceptions=True
    )
    assert sum(isinstance(o, BudgetReservation) for o in outcomes) == 2  # 0.8 + 2 x 0.1 = 1.0
    assert all(isinstance(o, BudgetReservation | BudgetExceeded) for o in outcomes)
    assert asked == [(BudgetScopeKey("team-daily", "team", "ml", None), utc(2026, 11, 29, 23))]
    clock.now = MIDNIGHT + 5
    await reserve(budgets, 0.1)
    assert len(asked) == 2 and asked[1][1] == MIDNIGHT


async def test_seeding_never_overwrites_a_live_counter_and_a_failure_is_retried() -> None:
    clock = Clock()
    ledger = MemoryBudgetLedger(clock)
    first = service(team_rule(hard_limit=1.0), clock=clock, ledger=ledger)
    await (await reserve(first, 0.7)).settle(0.7)
    failures = [StoreUnavailable("database down")]

    async def recorded(scope: BudgetScopeKey, window_start: float) -> float:
        if failures:
            raise failures.pop()
        return 0.1  # the database lags behind the live counter

    second = service(team_rule(hard_limit=1.0), clock=clock, ledger=ledger, seed_spend=recorded)
    with pytest.raises(StoreUnavailable):
        await reserve(second, 0.1)
    assert await spent(second) == 0.7  # seeded on the retry, which kept the live count
    with pytest.raises(BudgetExceeded):
        await reserve(second, 0.4)


async def test_no_rules_cost_nothing_and_never_touch_the_ledger() -> None:
    # Nothing listens on port 1: any ledger call would fail with StoreUnavailable.
    unreachable = RedisBudgetLedger.from_url("redis://127.0.0.1:1/0")
    budgets = service(ledger=unreachable)
    assert not budgets.active
    held = await reserve(budgets, 5.0, tags=("a", "b"))
    assert held is NO_BUDGET and held.fallback_model is None
    await held.settle(3.0)
    assert await budgets.status(team="ml") == []
    only_ops = service(team_rule(match=["ops"], hard_limit=1.0), ledger=unreachable)
    assert only_ops.active
    assert await reserve(only_ops, 5.0) is NO_BUDGET  # a rule that does not apply
    await unreachable.close()
