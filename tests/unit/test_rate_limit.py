"""The rate limiter over the in-process counter, against a clock the test moves."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence

import pytest

from shipway.config import RateLimitSettings
from shipway.errors import RateLimited, StoreUnavailable
from shipway.security.principal import ANONYMOUS, Principal
from shipway.security.rate_limit import Admission, RateLimiter, format_duration
from shipway.store import CounterResult, MemoryCounter
from shipway.store.counter import Hit

START = 1_000_020.0  # a multiple of 60: the start of a one-minute window


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class CountingCounter(MemoryCounter):
    """The in-process counter, counting the calls that would each be a Redis round trip."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.calls = 0

    async def _hit_many(self, hits: Sequence[Hit]) -> list[CounterResult]:
        self.calls += 1
        return await super()._hit_many(hits)

    async def _adjust_many(self, held: Sequence[tuple[str, int]], delta: int) -> None:
        self.calls += 1
        await super()._adjust_many(held, delta)


class DownCounter(MemoryCounter):
    async def _hit_many(self, hits: Sequence[Hit]) -> list[CounterResult]:
        raise StoreUnavailable("Redis is unreachable")


class StallingCounter(MemoryCounter):
    """A call that takes tokens waits for ``go`` or fails, as a slow or lost Redis does."""

    def __init__(self, clock: Clock, *, fail: bool = False) -> None:
        super().__init__(clock)
        self.fail = fail
        self.stalled = asyncio.Event()
        self.go = asyncio.Event()

    async def _hit_many(self, hits: Sequence[Hit]) -> list[CounterResult]:
        if any(hit.key.startswith("rl:tpm:") for hit in hits):
            if self.fail:
                raise StoreUnavailable("Redis is unreachable")
            self.stalled.set()
            await self.go.wait()
        return await super()._hit_many(hits)


def key(key_id: int = 12, name: str = "alice", **limits: int | None) -> Principal:
    return dataclasses.replace(
        ANONYMOUS, key_id=key_id, name=name, prefix=f"sw-{name[:3]}12345", **limits
    )


def member(key_id: int, name: str, **limits: int | None) -> Principal:
    return key(key_id, name, team_id=3, team="acme", **limits)


@pytest.fixture
def clock() -> Clock:
    return Clock(START)


@pytest.fixture
def counter(clock: Clock) -> CountingCounter:
    return CountingCounter(clock)


@pytest.fixture
def limiter(counter: CountingCounter) -> RateLimiter:
    return RateLimiter(counter, RateLimitSettings())


async def remaining(counter: MemoryCounter, name: str, limit: int) -> int:
    return (await counter.hit(name, 0, limit, 60)).remaining


async def test_requests_over_the_rpm_are_refused_until_the_window_ends(
    limiter: RateLimiter, clock: Clock
) -> None:
    alice = key(rpm=2)
    first = await limiter.admit(alice, tokens=10)
    assert dict(first.headers())[b"x-ratelimit-remaining-requests"] == b"1"
    await limiter.admit(alice, tokens=10)
    clock.now = START + 47.7
    with pytest.raises(RateLimited) as refused:
        await limiter.admit(alice, tokens=10)
    error = refused.value
    assert (error.status, error.type, error.code) == (429, "requests", "rate_limit_exceeded")
    assert error.retry_after == pytest.approx(12.3)
    assert error.message == (
        "Rate limit reached for requests per minute on key 'alice' (sw-ali12345…): "
        "Limit 2, Used 2, Requested 1. Please try again in 12.3s."
    )
    # As OpenAI does, the 429 carries the refusing limit's headers too.
    assert error.headers == {
        "x-ratelimit-limit-requests": "2",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "12.3s",
    }
    clock.now = START + 60
    again = await limiter.admit(alice, tokens=10)
    assert dict(again.headers())[b"x-ratelimit-remaining-requests"] == b"1"


async def test_headers_follow_openai(limiter: RateLimiter, clock: Clock) -> None:
    clock.now = START + 0.5
    admission = await limiter.admit(key(rpm=60, tpm=10_000), tokens=1_234)
    assert admission.headers() == [
        (b"x-ratelimit-limit-requests", b"60"),
        (b"x-ratelimit-remaining-requests", b"59"),
        (b"x-ratelimit-reset-requests", b"59.5s"),
        (b"x-ratelimit-limit-tokens", b"10000"),
        (b"x-ratelimit-remaining-tokens", b"8766"),
        (b"x-ratelimit-reset-tokens", b"59.5s"),
    ]


async def test_only_the_limits_set_have_headers(limiter: RateLimiter) -> None:
    admission = await limiter.admit(key(tpm=100), tokens=5)
    assert [name for name, _ in admission.headers()] == [
        b"x-ratelimit-limit-tokens",
        b"x-ratelimit-remaining-tokens",
        b"x-ratelimit-reset-tokens",
    ]


async def test_the_tighter_of_key_and_team_is_reported(limiter: RateLimiter) -> None:
    await limiter.admit(member(13, "bob", team_rpm=5), tokens=0)
    await limiter.admit(member(13, "bob", team_rpm=5), tokens=0)
    alice = member(12, "alice", rpm=10, team_rpm=5, tpm=1_000, team_tpm=5_000)
    headers = dict((await limiter.admit(alice, tokens=100)).headers())
    assert headers[b"x-ratelimit-limit-requests"] == b"5"  # the team: 2 left, the key: 9
    assert headers[b"x-ratelimit-remaining-requests"] == b"2"
    assert headers[b"x-ratelimit-limit-tokens"] == b"1000"  # the key: 900 left, the team 4900
    assert headers[b"x-ratelimit-remaining-tokens"] == b"900"


async def test_tokens_are_reserved_then_settled_from_real_usage(
    limiter: RateLimiter, clock: Clock
) -> None:
    alice = key(tpm=1_000)
    first = await limiter.admit(alice, tokens=600)
    assert dict(first.headers())[b"x-ratelimit-remaining-tokens"] == b"400"
    clock.now = START + 30
    with pytest.raises(RateLimited) as refused:
        await limiter.admit(alice, tokens=600)
    assert refused.value.type == "tokens"
    assert refused.value.retry_after == 30
    assert refused.value.message == (
        "Rate limit reached for tokens per minute on key 'alice' (sw-ali12345…): "
        "Limit 1000, Used 600, Requested 600. Please try again in 30s."
    )
    await first.settle(100)  # the answer was short: 500 tokens come back
    second = await limiter.admit(alice, tokens=600)
    assert dict(second.headers())[b"x-ratelimit-remaining-tokens"] == b"300"


async def test_usage_over_the_reservation_is_counted(
    limiter: RateLimiter, counter: CountingCounter
) -> None:
    admission = await limiter.admit(key(tpm=1_000), tokens=100)
    await admission.settle(700)
    assert await remaining(counter, "rl:tpm:key:12", 1_000) == 300


async def test_settle_and_release_act_once(limiter: RateLimiter, counter: CountingCounter) -> None:
    admission = await limiter.admit(key(tpm=1_000), tokens=600)
    await admission.settle(100)
    await admission.settle(100)
    await admission.release()
    assert await remaining(counter, "rl:tpm:key:12", 1_000) == 900


async def test_concurrent_settles_act_once(limiter: RateLimiter, counter: CountingCounter) -> None:
    admission = await limiter.admit(key(tpm=1_000), tokens=600)
    await asyncio.gather(*(admission.settle(0) for _ in range(5)))
    assert await remaining(counter, "rl:tpm:key:12", 1_000) == 1_000


async def test_release_gives_back_the_tokens_but_the_request_still_counts(
    limiter: RateLimiter, counter: CountingCounter
) -> None:
    admission = await limiter.admit(key(rpm=10, tpm=1_000), tokens=600)
    await admission.release()
    assert await remaining(counter, "rl:tpm:key:12", 1_000) == 1_000
    assert await remaining(counter, "rl:rpm:key:12", 10) == 9


async def test_settle_corrects_the_window_the_reservation_was_made_in(
    limiter: RateLimiter, counter: CountingCounter, clock: Clock
) -> None:
    clock.now = START + 59
    old = await limiter.admit(key(tpm=1_000), tokens=600)
    clock.now = START + 61
    await limiter.admit(key(tpm=1_000), tokens=900)
    await old.settle(0)  # its window has ended: the new window's count is not touched
    assert await remaining(counter, "rl:tpm:key:12", 1_000) == 100


async def test_a_team_limit_is_shared_by_its_keys(limiter: RateLimiter) -> None:
    alice = member(12, "alice", team_rpm=3)
    bob = member(13, "bob", rpm=100, team_rpm=3)
    await limiter.admit(alice, tokens=0)
    await limiter.admit(alice, tokens=0)
    await limiter.admit(bob, tokens=0)
    for caller in (alice, bob):
        with pytest.raises(RateLimited, match="on team 'acme': Limit 3, Used 3, Requested 1"):
            await limiter.admit(caller, tokens=0)


async def test_team_tokens_are_shared_and_settled(limiter: RateLimiter) -> None:
    alice = member(12, "alice", team_tpm=1_000)
    bob = member(13, "bob", team_tpm=1_000)
    held = await limiter.admit(alice, tokens=800)
    with pytest.raises(RateLimited, match="tokens per minute on team 'acme'"):
        await limiter.admit(bob, tokens=300)
    await held.settle(200)
    await limiter.admit(bob, tokens=300)


async def test_a_refused_admit_leaves_no_partial_counts(
    limiter: RateLimiter, counter: CountingCounter
) -> None:
    await limiter.admit(member(13, "bob", team_tpm=500), tokens=400)
    limits = {"rl:rpm:key:12": 10, "rl:rpm:team:3": 10, "rl:tpm:key:12": 1_000}
    alice = member(12, "alice", rpm=10, team_rpm=10, tpm=1_000, team_tpm=500)
    # The last limit taken (the team's tokens) refuses, after three were taken.
    with pytest.raises(RateLimited, match="tokens per minute on team 'acme'"):
        await limiter.admit(alice, tokens=200)
    assert {name: await remaining(counter, name, limit) for name, limit in limits.items()} == (
        limits
    )
    assert await remaining(counter, "rl:tpm:team:3", 500) == 100


async def test_a_caller_without_limits_costs_no_counter_call(
    limiter: RateLimiter, counter: CountingCounter
) -> None:
    first = await limiter.admit(ANONYMOUS, tokens=10_000)
    second = await limiter.admit(key(), tokens=10)
    assert first is second  # one shared no-op admission
    assert first.headers() == []
    await first.settle(123)
    await first.release()
    await second.settle(5)
    assert counter.calls == 0


async def test_one_counter_call_per_admit_and_per_settle_that_corrects(
    limiter: RateLimiter, counter: CountingCounter
) -> None:
    admission = await limiter.admit(key(rpm=10, tpm=1_000), tokens=100)
    assert counter.calls == 1
    await admission.settle(100)  # used what it reserved: nothing to correct
    assert counter.calls == 1
    await admission.release()
    assert counter.calls == 1
    requests_only = await limiter.admit(key(rpm=10), tokens=100)
    await requests_only.settle(5)  # no tpm: no reservation to correct
    assert counter.calls == 2
    everything = member(12, "alice", rpm=10, tpm=1_000, team_rpm=10, team_tpm=1_000)
    admission = await limiter.admit(everything, tokens=100)
    assert counter.calls == 3
    await admission.settle(40)
    assert counter.calls == 4
    with pytest.raises(RateLimited):
        await limiter.admit(key(rpm=10, tpm=1_000), tokens=1_000)
    assert counter.calls == 5  # a refusal has nothing to give back


async def test_when_several_limits_refuse_the_first_in_order_is_reported(
    limiter: RateLimiter, counter: CountingCounter
) -> None:
    await limiter.admit(member(13, "bob", team_tpm=500), tokens=450)
    alice = member(12, "alice", rpm=1, team_rpm=10, tpm=1_000, team_tpm=500)
    await limiter.admit(alice, tokens=0)
    # The key's requests and the team's tokens both refuse: requests come first.
    with pytest.raises(RateLimited) as refused:
        await limiter.admit(alice, tokens=100)
    assert refused.value.type == "requests"
    assert "on key 'alice'" in refused.value.message
    assert await remaining(counter, "rl:rpm:team:3", 10) == 9
    assert await remaining(counter, "rl:tpm:key:12", 1_000) == 1_000


async def test_a_request_larger_than_the_tpm_can_never_fit(
    limiter: RateLimiter, counter: CountingCounter
) -> None:
    with pytest.raises(RateLimited) as refused:
        await limiter.admit(member(12, "alice", rpm=10, team_tpm=1_000), tokens=1_500)
    error = refused.value
    assert (error.status, error.type, error.retry_after) == (429, "tokens", None)
    assert error.message.startswith(
        "Request too large for tokens per minute on team 'acme': Limit 1000, Requested 1500."
    )
    assert counter.calls == 0


async def test_an_rpm_of_zero_refuses_every_request(limiter: RateLimiter) -> None:
    with pytest.raises(RateLimited, match="its requests per minute limit is 0") as refused:
        await limiter.admit(key(rpm=0), tokens=1)
    assert (refused.value.type, refused.value.retry_after) == ("requests", None)


async def test_an_unreachable_counter_fails_closed(clock: Clock) -> None:
    limiter = RateLimiter(DownCounter(clock), RateLimitSettings())
    with pytest.raises(StoreUnavailable):
        await limiter.admit(key(rpm=10), tokens=1)
    assert isinstance(await limiter.admit(ANONYMOUS, tokens=1), Admission)


async def test_a_counter_lost_during_admit_fails_closed_and_takes_nothing(clock: Clock) -> None:
    counter = StallingCounter(clock, fail=True)
    limiter = RateLimiter(counter, RateLimitSettings())
    with pytest.raises(StoreUnavailable):
        await limiter.admit(key(rpm=10, tpm=1_000), tokens=100)
    assert await remaining(counter, "rl:rpm:key:12", 10) == 10


async def test_a_refusal_needs_no_giving_back(clock: Clock) -> None:
    class NoAdjust(MemoryCounter):
        async def _adjust_many(self, held: Sequence[tuple[str, int]], delta: int) -> None:
            raise StoreUnavailable("Redis is unreachable")

    limiter = RateLimiter(NoAdjust(clock), RateLimitSettings())
    await limiter.admit(key(tpm=100), tokens=100)
    with pytest.raises(RateLimited):
        await limiter.admit(key(rpm=10, tpm=100), tokens=1)


async def test_a_cancelled_admit_takes_nothing(clock: Clock) -> None:
    counter = StallingCounter(clock)
    limiter = RateLimiter(counter, RateLimitSettings())
    admit = asyncio.create_task(
        limiter.admit(member(12, "alice", rpm=10, team_rpm=10, tpm=1_000), tokens=100)
    )
    await counter.stalled.wait()
    admit.cancel()
    with pytest.raises(asyncio.CancelledError):
        await admit
    assert await remaining(counter, "rl:rpm:key:12", 10) == 10
    assert await remaining(counter, "rl:rpm:team:3", 10) == 10


async def test_another_window_is_named_in_messages(clock: Clock) -> None:
    limiter = RateLimiter(MemoryCounter(clock), RateLimitSettings(window_s=10))
    await limiter.admit(key(rpm=1), tokens=0)
    with pytest.raises(RateLimited, match=r"requests per 10s on key .* try again in 10s\."):
        await limiter.admit(key(rpm=1), tokens=0)


def test_token_estimates(limiter: RateLimiter) -> None:
    alice = key(tpm=100_000)
    assert limiter.estimate_tokens(alice, prompt_chars=401, max_tokens=50) == 101 + 50
    assert limiter.estimate_tokens(alice, prompt_chars=400, max_tokens=None) == 100 + 1024
    assert limiter.estimate_tokens(alice, prompt_chars=400, max_tokens=0) == 100
    # The default reservation shrinks to what the tightest tpm leaves after the prompt.
    small = member(12, "alice", tpm=900, team_tpm=600)
    assert limiter.estimate_tokens(small, prompt_chars=400, max_tokens=None) == 600
    assert limiter.estimate_tokens(small, prompt_chars=4_000, max_tokens=None) == 1_000


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.012, "12ms"),
        (0.999, "999ms"),
        (1, "1s"),
        (1.898, "1.898s"),
        (12.3, "12.3s"),
        (59.1, "59.1s"),
        (60, "1m0s"),
        (90.5, "1m30.5s"),
        (360, "6m0s"),
        (3_600, "1h0m0s"),
        (86_400 + 61.25, "24h1m1.25s"),
    ],
)
def test_durations_are_written_as_openai_does(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
