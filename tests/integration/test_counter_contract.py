"""The counter contract, run against every implementation (in-process and real Redis)."""

from __future__ import annotations

import asyncio
import random

import pytest
from tests.support.stores import Replicas

from shipway.store import Counter

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
