"""Spend rows and reports, the same tests against SQLite (a temp file) and real PostgreSQL."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from shipway.store import Database
from shipway.store.models import CallCostRow
from shipway.store.spend import CallCost, SpendLine, SpendStore

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def cost(
    n: int,
    *,
    key: tuple[int, str] | None = (1, "app"),
    team: str | None = "search",
    user: str | None = None,
    tags: list[str] | None = None,
    model: str = "smollm2-135m",
    served: str | None = None,
    prompt: int = 10,
    completion: int = 5,
    price: float = 0.25,
    saved: float = 0.0,
    ago: timedelta = timedelta(hours=1),
) -> CallCost:
    return CallCost(
        request_id=f"req-{n}",
        at=NOW - ago,
        key_id=None if key is None else key[0],
        key_name=None if key is None else key[1],
        team=team,
        user=user,
        tags=tags,
        model_requested=model,
        model_served=served or model,
        prompt_tokens=prompt,
        completion_tokens=completion,
        cost=price,
        saved=saved,
        cached=saved > 0,
        batch_id=None,
    )


@pytest.fixture
async def spend(database: Database) -> SpendStore:
    store = SpendStore(database)
    await store.append(
        [
            cost(1, tags=["ads", "eu"], user="alice", price=1.0),
            cost(2, tags=["ads"], user="alice", price=2.0, saved=0.5, prompt=20),
            cost(3, key=(2, "batch"), team="ads", user="bob", price=4.0, served="gpt-4o-mini"),
            cost(4, key=None, team=None, model="auto", served="gpt-4o-mini", price=8.0),
            # Outside the report window (8 days old).
            cost(5, tags=["ads"], price=100.0, ago=timedelta(days=8)),
        ]
    )
    return store


async def test_rows_keep_every_field(database: Database) -> None:
    store = SpendStore(database)
    row = CallCost(
        request_id="r" * 80,
        at=NOW,
        key_id=7,
        key_name="app",
        team="search",
        user="u" * 300,
        tags=("x", "y"),
        model_requested="auto",
        model_served="smollm2-135m",
        prompt_tokens=12,
        completion_tokens=3,
        cost=0.125,
        saved=0.5,
        cached=True,
        batch_id="batch_1",
    )
    await store.append([row])
    await store.append([])
    async with database.transaction() as session:
        stored = (await session.scalars(select(CallCostRow))).one()
    assert stored.id >= 1
    assert stored.request_id == "r" * 64 and stored.user == "u" * 256  # cut to the column
    assert stored.at == NOW and stored.at.tzinfo is UTC
    assert (stored.key_id, stored.key_name, stored.team) == (7, "app", "search")
    assert stored.tags == ["x", "y"]
    assert (stored.model_requested, stored.model_served) == ("auto", "smollm2-135m")
    assert (stored.prompt_tokens, stored.completion_tokens) == (12, 3)
    assert (stored.cost, stored.saved, stored.cached, stored.batch_id) == (
        0.125,
        0.5,
        True,
        "batch_1",
    )


async def test_naive_times_are_refused(database: Database) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        await SpendStore(database).append([replace(cost(1), at=datetime(2026, 1, 1))])


async def test_report_by_team_sums_the_window_largest_first(spend: SpendStore) -> None:
    lines = await spend.report("team", NOW - timedelta(days=7))
    assert lines == [
        SpendLine(None, 1, 10, 5, 8.0, 0.0, 0),
        SpendLine("ads", 1, 10, 5, 4.0, 0.0, 0),
        SpendLine("search", 2, 30, 10, 3.0, 0.5, 1),
    ]


async def test_report_by_key_model_and_user(spend: SpendStore) -> None:
    since = NOW - timedelta(days=7)
    by_key = await spend.report("key", since)
    assert [(line.key_id, line.group, line.requests, line.cost) for line in by_key] == [
        (None, None, 1, 8.0),
        (2, "batch", 1, 4.0),
        (1, "app", 2, 3.0),
    ]
    by_model = await spend.report("model", since)
    # The model that served (and was paid for), not the route asked for.
    assert [(line.group, line.requests, line.cost) for line in by_model] == [
        ("gpt-4o-mini", 2, 12.0),
        ("smollm2-135m", 2, 3.0),
    ]
    by_user = await spend.report("user", since)
    assert [(line.group, line.cost) for line in by_user] == [
        (None, 8.0),
        ("bob", 4.0),
        ("alice", 3.0),
    ]


async def test_report_by_tag_counts_a_request_under_each_of_its_tags(spend: SpendStore) -> None:
    lines = await spend.report("tag", NOW - timedelta(days=7))
    assert [(line.group, line.requests, line.prompt_tokens, line.cost) for line in lines] == [
        (None, 2, 20, 12.0),
        ("ads", 2, 30, 3.0),
        ("eu", 1, 10, 1.0),
    ]
    assert lines[1].saved == 0.5 and lines[1].cache_hits == 1


async def test_since_until_and_team_filters(spend: SpendStore) -> None:
    everything = await spend.report("team", NOW - timedelta(days=30))
    assert sum(line.cost for line in everything) == 115.0
    assert await spend.report("team", NOW) == []
    old = await spend.report("tag", NOW - timedelta(days=30), NOW - timedelta(days=7))
    assert [(line.group, line.cost) for line in old] == [("ads", 100.0)]
    own = await spend.report("user", NOW - timedelta(days=7), team="search")
    assert [(line.group, line.cost) for line in own] == [("alice", 3.0)]
    total = await spend.total(NOW - timedelta(days=7))
    assert (total.requests, total.cost, total.saved, total.cache_hits) == (4, 15.0, 0.5, 1)
    assert (await spend.total(NOW - timedelta(days=7), team="ads")).cost == 4.0


async def test_spent_seeds_a_budget_by_key_team_and_tag(spend: SpendStore) -> None:
    since = NOW - timedelta(days=7)
    assert await spend.spent("key", "1", since) == 3.0
    assert await spend.spent("key", "2", since) == 4.0
    assert await spend.spent("team", "search", since) == 3.0
    assert await spend.spent("team", "search", NOW - timedelta(days=30)) == 103.0
    assert await spend.spent("tag", "ads", since) == 3.0
    assert await spend.spent("tag", "eu", since) == 1.0
    assert await spend.spent("tag", "nobody", since) == 0.0
    # Only calls served by the rule's models count.
    assert await spend.spent("team", "ads", since, ["smollm2-135m"]) == 0.0
    assert await spend.spent("team", "ads", since, ["gpt-4o-mini"]) == 4.0


async def test_reporting_by_an_unknown_dimension_is_refused(spend: SpendStore) -> None:
    with pytest.raises(ValueError, match="cannot group by 'region'"):
        await spend.report("region", NOW)  # type: ignore[arg-type]
