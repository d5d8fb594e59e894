"""The cost of rate limiting one request (admit + settle), measured in-process.

The hot-path aim is that authentication and limits together cost at most 10% of a
gateway's requests per second. Here ``RateLimiter.admit`` and ``Admission.settle`` run back
to back, one request at a time, for: a caller without limits (no counter call), a key with
rpm + tpm, and a key and its team with all four limits, on the in-process counter and on a
local Redis. CPU is this process's (what costs requests per second; Redis's own CPU is
elsewhere), wall is the latency a request waits. Settle reports a usage different from the
reservation, so it makes its counter call. Redis replies are parsed by hiredis when it is
installed (a dependency); ``--python-parser`` measures redis-py's pure-Python parser instead.

    python benchmarks/rate_limit_cost.py [--quick] [--redis-url redis://127.0.0.1:6379/0]
                                         [--python-parser]
"""

from __future__ import annotations

import dataclasses
import statistics
import time
import uuid
from typing import Any

import redis
import redis.asyncio as aioredis
import uvloop
from redis._parsers import _AsyncRESP3Parser
from redis.utils import HIREDIS_AVAILABLE

from _common import log, parse_args, report, table
from shipway.config import RateLimitSettings
from shipway.errors import StoreUnavailable
from shipway.security.principal import ANONYMOUS, Principal
from shipway.security.rate_limit import RateLimiter
from shipway.store import Counter, MemoryCounter, RedisCounter

BIG = 10**12  # limits nobody reaches: every admit is counted, none refused
CALLERS = {
    "no limits": ANONYMOUS,
    "key rpm+tpm": dataclasses.replace(
        ANONYMOUS, key_id=1, name="bench", prefix="sw-bench", rpm=BIG, tpm=BIG
    ),
    "key+team rpm+tpm": dataclasses.replace(
        ANONYMOUS,
        key_id=1,
        name="bench",
        prefix="sw-bench",
        team_id=1,
        team="bench",
        rpm=BIG,
        tpm=BIG,
        team_rpm=BIG,
        team_tpm=BIG,
    ),
}


async def per_request_us(
    limiter: RateLimiter, caller: Principal, requests: int
) -> tuple[float, float]:
    """(CPU µs, wall µs) per admit + settle."""
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(requests):
        admission = await limiter.admit(caller, tokens=1_100)
        await admission.settle(300)
    return (
        (time.process_time() - cpu) / requests * 1e6,
        (time.perf_counter() - wall) / requests * 1e6,
    )


def client_options(python_parser: bool) -> dict[str, Any]:
    # redis-py picks hiredis whenever it is installed; its own parser must be asked for.
    return {"parser_class": _AsyncRESP3Parser} if python_parser else {}


async def redis_counter(url: str, prefix: str, python_parser: bool) -> RedisCounter | None:
    if python_parser:
        client = aioredis.Redis.from_url(url, socket_timeout=2, **client_options(True))
        counter = RedisCounter(client, prefix=prefix, owns_client=True)
    else:
        counter = RedisCounter.from_url(url, prefix=prefix)
    try:
        await counter.start()
    except StoreUnavailable as exc:
        log(f"skipping Redis: {exc}")
        await counter.close()
        return None
    return counter


async def ping_us(url: str, requests: int, python_parser: bool) -> tuple[float, float]:
    """(CPU µs, wall µs) of one bare round trip through redis-py: the floor of a counter call."""
    client = aioredis.Redis.from_url(url, **client_options(python_parser))
    try:
        await client.ping()
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(requests):
            await client.ping()
        return (
            (time.process_time() - cpu) / requests * 1e6,
            (time.perf_counter() - wall) / requests * 1e6,
        )
    finally:
        await client.aclose()


def delete_keys(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def main() -> None:
    args = parse_args(
        __doc__.splitlines()[0],
        [
            ("--redis-url", {"default": "redis://127.0.0.1:6379/0", "help": "a local Redis"}),
            (
                "--python-parser",
                {"action": "store_true", "help": "parse Redis replies without hiredis"},
            ),
        ],
    )
    python_parser = args.python_parser or not HIREDIS_AVAILABLE
    rounds, requests, redis_requests = (3, 2_000, 300) if args.quick else (9, 20_000, 3_000)
    prefix = f"shipway-bench:{uuid.uuid4().hex}:"
    samples: dict[tuple[str, str], list[tuple[float, float]]] = {}

    reached: list[bool] = []  # set once Redis answers: then its keys are deleted at the end

    async def measure() -> None:
        counters: dict[str, tuple[Counter, int]] = {"memory": (MemoryCounter(), requests)}
        remote = await redis_counter(args.redis_url, prefix, python_parser)
        if remote is not None:
            reached.append(True)
            counters["redis"] = (remote, redis_requests)
        try:
            for store, (counter, n) in counters.items():
                limiter = RateLimiter(counter, RateLimitSettings())
                for caller in CALLERS.values():
                    await per_request_us(limiter, caller, n // 10)  # warm-up
                for _ in range(rounds):
                    for name, caller in CALLERS.items():
                        if store == "redis" and caller is ANONYMOUS:
                            continue  # no counter call: the same as in memory
                        sample = await per_request_us(limiter, caller, n)
                        samples.setdefault((name, store), []).append(sample)
                    if store == "redis":
                        sample = await ping_us(args.redis_url, n, python_parser)
                        samples.setdefault(("one redis-py PING", store), []).append(sample)
        finally:
            if remote is not None:
                await remote.close()

    try:
        uvloop.run(measure())
    finally:
        if reached:
            delete_keys(args.redis_url, prefix)

    gateway_us = 1e6 / 5_500  # the bare forwarder's ~5,500 req/s on one core (gateway_overhead)
    rows = []
    for (name, store), values in samples.items():
        cpu = statistics.median(v[0] for v in values)
        wall = statistics.median(v[1] for v in values)
        rows.append([name, store, cpu, wall, f"{cpu / gateway_us:.1%}"])
    notes = [
        f"{rounds} rounds of {requests:,} (memory) / {redis_requests:,} (Redis) sequential "
        "admit + settle per caller, uvloop, medians; counter calls per request: 0, 1 + 1, "
        "1 + 1 (admit + settle); the PING row is one bare redis-py round trip, for scale.",
        "Redis replies parsed by "
        + ("redis-py's pure-Python parser." if python_parser else "hiredis."),
        f"Share of a request: CPU beside a bare forwarder request's ~{gateway_us:.0f} µs of CPU.",
    ]
    if not reached:
        notes.append(f"Redis at {args.redis_url} was not reachable: no Redis rows.")
    report(
        "Rate limit cost (in-process)",
        [table(["caller", "counter", "CPU µs/request", "wall µs/request", "CPU share"], rows)],
        notes,
    )


if __name__ == "__main__":
    main()
