"""Two replicas' rate limiters on one real Redis admit exactly the limit, however they race;
and each admit, and each settle that corrects, is one Redis command."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import pytest
from tests.support.stores import Replicas

from shipway.config import RateLimitSettings
from shipway.errors import RateLimited
from shipway.security.principal import ANONYMOUS, Principal
from shipway.security.rate_limit import Admission, RateLimiter
from shipway.store import Counter, RedisCounter

# Long enough that no window edge falls inside a test (windows are aligned to the epoch).
SETTINGS = RateLimitSettings(window_s=1_000_000)


def member(key_id: int, **limits: int | None) -> Principal:
    return dataclasses.replace(
        ANONYMOUS, key_id=key_id, name=f"k{key_id}", team_id=3, team="acme", **limits
    )


@pytest.fixture
async def redis_replicas(redis_url: str) -> AsyncIterator[Replicas]:
    group = Replicas("redis", redis_url)
    yield group
    await group.close()


@pytest.fixture
async def counters(redis_replicas: Replicas) -> list[Counter]:
    """Two counters with their own connections, as two replicas have."""
    return [await redis_replicas.counter(), await redis_replicas.counter()]


async def storm(
    counters: list[Counter], callers: list[Principal], n: int, tokens: int
) -> list[Admission | RateLimited]:
    """``n`` admits at once, spread over the replicas and the callers."""
    limiters = [RateLimiter(counter, SETTINGS) for counter in counters]

    async def one(i: int) -> Admission | RateLimited:
        try:
            return await limiters[i % len(limiters)].admit(callers[i % len(callers)], tokens=tokens)
        except RateLimited as refused:
            return refused

    return await asyncio.gather(*(one(i) for i in range(n)))


async def left(counter: Counter, name: str, limit: int) -> int:
    return (await counter.hit(name, 0, limit, SETTINGS.window_s)).remaining


async def test_two_replicas_admit_exactly_the_rpm(counters: list[Counter]) -> None:
    results = await storm(counters, [member(12, rpm=50)], 200, tokens=1)
    admitted = [r for r in results if isinstance(r, Admission)]
    assert len(admitted) == 50
    assert all(r.type == "requests" for r in results if isinstance(r, RateLimited))
    assert await left(counters[0], "rl:rpm:key:12", 50) == 0


async def test_two_replicas_admit_exactly_the_tpm(counters: list[Counter]) -> None:
    results = await storm(counters, [member(12, tpm=1_000)], 100, tokens=30)
    admitted = [r for r in results if isinstance(r, Admission)]
    assert len(admitted) == 33  # 33 x 30 = 990; one more would be 1,020
    await asyncio.gather(*(a.settle(10) for a in admitted))
    assert await left(counters[1], "rl:tpm:key:12", 1_000) == 1_000 - 33 * 10


async def test_a_team_limit_holds_across_replicas_and_leaves_no_partial_counts(
    counters: list[Counter],
) -> None:
    alice, bob = member(12, rpm=40, team_rpm=50), member(13, rpm=40, team_rpm=50)
    results = await storm(counters, [alice, bob], 200, tokens=1)
    assert sum(isinstance(r, Admission) for r in results) == 50
    # A request the team refused gave its key's request back: the keys hold 50 between them.
    taken = [40 - await left(counters[0], f"rl:rpm:key:{i}", 40) for i in (12, 13)]
    assert sum(taken) == 50


async def test_an_admit_and_its_settle_are_one_redis_command_each(counters: list[Counter]) -> None:
    counter = counters[0]
    assert isinstance(counter, RedisCounter)
    client = counter._client
    real = client.execute_command
    commands: list[object] = []

    async def counted(*args: object, **options: object) -> object:
        commands.append(args[0])
        return await real(*args, **options)

    client.execute_command = counted  # type: ignore[method-assign]
    limiter = RateLimiter(counter, SETTINGS)
    everything = member(12, rpm=10, tpm=1_000, team_rpm=10, team_tpm=1_000)
    admission = await limiter.admit(everything, tokens=100)
    assert commands == ["EVALSHA"]
    await admission.settle(40)
    assert commands == ["EVALSHA", "EVALSHA"]
    with pytest.raises(RateLimited):
        await limiter.admit(everything, tokens=1_000)
    assert commands == ["EVALSHA"] * 3  # refused: nothing to give back
    client.execute_command = real  # type: ignore[method-assign]
    assert await left(counter, "rl:tpm:key:12", 1_000) == 960
    assert await left(counter, "rl:tpm:team:3", 1_000) == 960
    assert await left(counter, "rl:rpm:team:3", 10) == 9
