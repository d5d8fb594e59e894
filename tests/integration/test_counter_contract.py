"""The counter contract, run against every implementation (in-process and real Redis)."""

from __future__ import annotations

import asyncio
import random

import pytest
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError
from tests.support.stores import Replicas

from shipway.store import Counter, RedisCounter
from shipway.store.counter import Hit

# Long enough that no window edge falls inside a test (windows are aligned to the epoch).
LONG = 1_000_000.0
SHORT = 0.5


async def fresh_window(counter: Counter, key: str, window_s: float) -> None:
    """Wait out the current short window if little of it is left, so a test fits in one."""
    peek = await counter.hit(key, 0, 1, window_s)
    if peek.reset_after_s < window_s * 0.6:
        await asyncio.sleep(peek.reset_after_s + 0.02)


async def test_counts_up_to_the_limit_then_refuses(counter: Counter) -> None:
    results = [await counter.hit("k", 1, 3, LONG) for _ in range(5)]
    assert [r.allowed for r in results] == [True, True, True, False, False]
    assert [r.remaining for r in results] == [2, 1, 0, 0, 0]
    assert all(r.limit == 3 for r in results)
    assert all(0 < r.reset_after_s <= LONG for r in results)
    assert len({r.window for r in results}) == 1


async def test_a_refused_hit_takes_nothing(counter: Counter) -> None:
    assert (await counter.hit("tokens", 70, 100, LONG)).allowed
    refused = await counter.hit("tokens", 40, 100, LONG)
    assert not refused.allowed and refused.remaining == 30
    assert (await counter.hit("tokens", 30, 100, LONG)).remaining == 0


async def test_an_amount_over_the_limit_is_never_allowed(counter: Counter) -> None:
    result = await counter.hit("big", 101, 100, LONG)
    assert not result.allowed and result.remaining == 100


async def test_amount_zero_reads_without_counting(counter: Counter) -> None:
    await counter.hit("k", 2, 5, LONG)
    peek = await counter.hit("k", 0, 5, LONG)
    assert peek.allowed and peek.remaining == 3
    assert (await counter.hit("k", 0, 5, LONG)).remaining == 3


async def test_keys_are_independent(counter: Counter) -> None:
    await counter.hit("a", 5, 5, LONG)
    assert not (await counter.hit("a", 1, 5, LONG)).allowed
    assert (await counter.hit("b", 1, 5, LONG)).allowed


async def test_release_gives_a_reservation_back(counter: Counter) -> None:
    reserved = await counter.hit("tpm", 80, 100, LONG)
    await counter.release("tpm", 80, reserved.window)
    assert (await counter.hit("tpm", 0, 100, LONG)).remaining == 100
    await counter.release("tpm", 50, reserved.window)  # never below zero
    assert (await counter.hit("tpm", 100, 100, LONG)).allowed


async def test_settle_replaces_the_reservation_with_real_usage(counter: Counter) -> None:
    reserved = await counter.hit("tpm", 60, 100, LONG)
    await counter.settle("tpm", reserved=60, used=25, window=reserved.window)
    assert (await counter.hit("tpm", 0, 100, LONG)).remaining == 75
    # Usage over the reservation is counted even past the limit: the next request waits.
    await counter.settle("tpm", reserved=0, used=90, window=reserved.window)
    after = await counter.hit("tpm", 1, 100, LONG)
    assert not after.allowed and after.remaining == 0


async def test_the_count_starts_again_in_the_next_window(counter: Counter) -> None:
    await fresh_window(counter, "w", SHORT)
    first = await counter.hit("w", 2, 2, SHORT)
    assert first.allowed and 0 < first.reset_after_s <= SHORT
    assert not (await counter.hit("w", 1, 2, SHORT)).allowed
    await asyncio.sleep(first.reset_after_s + 0.02)
    again = await counter.hit("w", 2, 2, SHORT)
    assert again.allowed and again.window > first.window
    # A release against the ended window must not credit the new one.
    await counter.release("w", 2, first.window)
    assert not (await counter.hit("w", 1, 2, SHORT)).allowed


async def test_arguments_are_checked(counter: Counter) -> None:
    with pytest.raises(ValueError):
        await counter.hit("k", -1, 5, LONG)
    with pytest.raises(ValueError):
        await counter.hit("k", 1, 5, 0)


async def test_concurrent_requests_never_pass_the_limit(replicas: Replicas) -> None:
    # Three replicas (three Redis connection pools) racing 300 hits at a limit of 50.
    counters = [await replicas.counter() for _ in range(3)]
    hits = [counters[i % 3].hit("rpm", 1, 50, LONG) for i in range(300)]
    results = await asyncio.gather(*hits)
    assert sum(r.allowed for r in results) == 50


async def test_concurrent_token_reservations_never_pass_the_limit(replicas: Replicas) -> None:
    counters = [await replicas.counter() for _ in range(3)]
    amounts = [random.randint(1, 40) for _ in range(300)]
    results = await asyncio.gather(
        *(counters[i % 3].hit("tpm", amount, 1000, LONG) for i, amount in enumerate(amounts))
    )
    taken = sum(a for a, r in zip(amounts, results, strict=True) if r.allowed)
    assert 1000 - 40 < taken <= 1000
    assert (await counters[0].hit("tpm", 0, 1000, LONG)).remaining == 1000 - taken


async def left(counter: Counter, key: str, limit: int, window_s: float = LONG) -> int:
    return (await counter.hit(key, 0, limit, window_s)).remaining


async def test_hit_many_counts_every_hit_when_all_fit(counter: Counter) -> None:
    await counter.hit("team", 5, 100, LONG)
    results = await counter.hit_many(
        [Hit("key", 1, 10, LONG), Hit("team", 30, 100, LONG), Hit("other", 0, 7, LONG)]
    )
    assert [r.allowed for r in results] == [True, True, True]
    assert [(r.limit, r.remaining) for r in results] == [(10, 9), (100, 65), (7, 7)]
    assert all(0 < r.reset_after_s <= LONG for r in results)
    assert (await left(counter, "key", 10), await left(counter, "team", 100)) == (9, 65)


async def test_hit_many_counts_nothing_when_one_is_refused(counter: Counter) -> None:
    await counter.hit("team", 95, 100, LONG)
    results = await counter.hit_many(
        [Hit("key", 1, 10, LONG), Hit("team", 10, 100, LONG), Hit("tokens", 50, 1000, LONG)]
    )
    # The refusing hit is the one that says so, with its window's reset; the others fit but
    # were not counted either.
    assert [r.allowed for r in results] == [True, False, True]
    assert [r.remaining for r in results] == [10, 5, 1000]
    assert 0 < results[1].reset_after_s <= LONG
    assert await left(counter, "key", 10) == 10
    assert await left(counter, "team", 100) == 5
    assert await left(counter, "tokens", 1000) == 1000


async def test_hit_many_reports_every_refusal(counter: Counter) -> None:
    await counter.hit("a", 3, 3, LONG)
    results = await counter.hit_many(
        [Hit("a", 1, 3, LONG), Hit("b", 1, 3, LONG), Hit("c", 4, 3, LONG)]
    )
    assert [r.allowed for r in results] == [False, True, False]
    assert await left(counter, "b", 3) == 3


async def test_hit_many_counts_each_key_in_its_own_window(counter: Counter) -> None:
    await fresh_window(counter, "short", SHORT)
    first = await counter.hit_many([Hit("short", 2, 2, SHORT), Hit("long", 2, 10, LONG)])
    assert all(r.allowed for r in first)
    assert first[0].reset_after_s <= SHORT < first[1].reset_after_s
    await asyncio.sleep(first[0].reset_after_s + 0.02)
    # The short window has ended and counts afresh; the long one still holds the first hit.
    again = await counter.hit_many([Hit("short", 2, 2, SHORT), Hit("long", 2, 10, LONG)])
    assert [r.remaining for r in again] == [0, 6]
    assert again[0].window > first[0].window and again[1].window == first[1].window


async def test_hit_many_checks_its_arguments(counter: Counter) -> None:
    assert await counter.hit_many([]) == []
    with pytest.raises(ValueError, match="distinct"):
        await counter.hit_many([Hit("k", 1, 5, LONG), Hit("k", 1, 5, LONG)])
    with pytest.raises(ValueError):
        await counter.hit_many([Hit("a", 1, 5, LONG), Hit("b", -1, 5, LONG)])
    with pytest.raises(ValueError):
        await counter.hit_many([Hit("a", 1, 5, LONG), Hit("b", 1, 5, 0)])
    assert await left(counter, "a", 5) == 5  # a refused call took nothing


async def test_settle_many_corrects_every_reservation(counter: Counter) -> None:
    results = await counter.hit_many([Hit("key", 600, 1000, LONG), Hit("team", 600, 5000, LONG)])
    held = [("key", results[0].window), ("team", results[1].window)]
    await counter.settle_many(held, reserved=600, used=100)
    assert (await left(counter, "key", 1000), await left(counter, "team", 5000)) == (900, 4900)
    await counter.settle_many(held, reserved=100, used=1_200)  # over the limit is counted
    assert (await left(counter, "key", 1000), await left(counter, "team", 5000)) == (0, 3800)
    await counter.settle_many(held, reserved=5_000, used=0)  # never below zero
    assert (await left(counter, "key", 1000), await left(counter, "team", 5000)) == (1000, 5000)
    await counter.settle_many([], reserved=10, used=0)


async def test_settle_many_leaves_ended_windows_alone(counter: Counter) -> None:
    await fresh_window(counter, "short", SHORT)
    old = await counter.hit_many([Hit("short", 2, 2, SHORT), Hit("long", 8, 10, LONG)])
    await asyncio.sleep(old[0].reset_after_s + 0.02)
    assert (await counter.hit("short", 2, 2, SHORT)).allowed
    await counter.settle_many([("short", old[0].window), ("long", old[1].window)], 8, 0)
    # The short key's new window keeps its count; the long key's reservation comes back.
    assert await left(counter, "short", 2, SHORT) == 0
    assert await left(counter, "long", 10) == 10


async def test_concurrent_hit_many_is_all_or_nothing_across_replicas(
    replicas: Replicas,
) -> None:
    # Two replicas (two Redis connection pools) race 200 calls: each takes from its own key,
    # "a" or "b", and from the "team" they share. "a" runs out first, then the team: a call
    # counted on one key but not the other would leave the team's count off the keys' sum.
    counters = [await replicas.counter() for _ in range(2)]
    amounts = [random.randint(1, 30) for _ in range(200)]
    own = ["a" if i % 2 else "b" for i in range(200)]
    limits = {"a": 600, "b": 1200, "team": 1500}

    def hits(i: int) -> list[Hit]:
        return [Hit(own[i], amounts[i], limits[own[i]], LONG), Hit("team", amounts[i], 1500, LONG)]

    results = await asyncio.gather(*(counters[i % 2].hit_many(hits(i)) for i in range(200)))
    admitted = [i for i, pair in enumerate(results) if all(r.allowed for r in pair)]
    taken = {k: sum(amounts[i] for i in admitted if own[i] == k) for k in "ab"}
    assert 600 - 30 < taken["a"] <= 600
    assert 1500 - 30 < taken["a"] + taken["b"] <= 1500
    assert await left(counters[0], "team", 1500) == 1500 - taken["a"] - taken["b"]
    assert await left(counters[1], "a", 600) == 600 - taken["a"]
    assert await left(counters[1], "b", 1200) == 1200 - taken["b"]


async def test_concurrent_settles_across_replicas_are_exact(replicas: Replicas) -> None:
    counters = [await replicas.counter() for _ in range(2)]
    reserved = await asyncio.gather(
        *(
            counters[i % 2].hit_many(
                [Hit(f"k{i % 3}", 100, 10_000, LONG), Hit("t", 100, 10**6, LONG)]
            )
            for i in range(90)
        )
    )
    used = [random.randint(0, 150) for _ in range(90)]
    await asyncio.gather(
        *(
            counters[i % 2].settle_many(
                [(f"k{i % 3}", pair[0].window), ("t", pair[1].window)], 100, used[i]
            )
            for i, pair in enumerate(reserved)
        )
    )
    assert await left(counters[0], "t", 10**6) == 10**6 - sum(used)
    for k in range(3):
        assert await left(counters[1], f"k{k}", 10_000) == 10_000 - sum(used[k::3])


async def test_redis_loads_its_scripts_again_when_redis_has_lost_them(redis_url: str) -> None:
    replicas = Replicas("redis", redis_url)
    try:
        counter = await replicas.counter()
        assert isinstance(counter, RedisCounter)
        client: aioredis.Redis = counter._client
        real = client.execute_command
        refused: list[str] = []

        async def forgetful(*args: object, **options: object) -> object:
            # A restarted Redis, or one failed over to, answers NOSCRIPT to a known SHA.
            if args[0] == "EVALSHA" and not refused:
                refused.append(str(args[1]))
                raise NoScriptError("NOSCRIPT No matching script.")
            return await real(*args, **options)

        client.execute_command = forgetful  # type: ignore[method-assign]
        assert (await counter.hit("k", 3, 5, LONG)).remaining == 2
        assert refused == [counter._hit.sha]
        # The SHA computed at start is the one Redis computes, so no call pays a reload.
        assert await client.script_load(counter_scripts()[0]) == counter._hit.sha
        assert await client.script_load(counter_scripts()[1]) == counter._adjust.sha
    finally:
        await replicas.close()


def counter_scripts() -> tuple[str, str]:
    from shipway.store import redis_counter

    return redis_counter._HIT_MANY, redis_counter._ADJUST_MANY
