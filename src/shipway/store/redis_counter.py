"""Counters in Redis: exact across every replica that shares it.

Each call is one Lua script, which Redis runs atomically, so concurrent hits from any number
of replicas cannot both pass a check that only one fits; ``hit_many`` reads every window
before it writes any, so it counts all its hits or none. The window comes from the Redis
server's clock (``TIME``), so replicas whose clocks drift still agree on it. Each counter is
one hash (``w`` = window start, ``n`` = count, ``l`` = window length) under one declared key,
and expires when its window ends. Every key a script touches is declared, as Redis Cluster
requires; there, the keys of one multi-key call must also share a hash slot: give the
counter a prefix with a hash tag (``shipway:{counter}:``).

The scripts run by ``EVALSHA`` with their SHA-1 computed once; a Redis that lost its script
cache (restart, failover, ``SCRIPT FLUSH``) is sent the script again on the ``NOSCRIPT``
error. Replies are parsed by hiredis (a dependency): measured against redis-py's own parser,
it saves 10-20% of the CPU of a limited request's admit and settle
(``benchmarks/rate_limit_cost.py --python-parser`` measures without it).
"""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis

from shipway.store.counter import Counter, CounterResult, Hit, window_ms
from shipway.store.redis_scripts import LuaScript, redis_call

__all__ = ["RedisCounter"]

# KEYS counters; ARGV amount, limit, window_ms for each key in turn
# → for each key in turn: fits (1/0), count, reset_ms, window_start
# Every check is made before any write: that is what makes the call all or nothing. Numbers
# stored or returned as text go through %d, not Lua's own conversion of its doubles (%.14g),
# which writes a large integer in exponent form.
_HIT_MANY = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local reply, counts, starts = {}, {}, {}
local fits = true
for i = 1, #KEYS do
  local amount, limit, length = tonumber(ARGV[3*i-2]), tonumber(ARGV[3*i-1]), tonumber(ARGV[3*i])
  local start = now - (now % length)
  local count = 0
  local held = redis.call('HMGET', KEYS[i], 'w', 'n', 'l')
  if tonumber(held[1]) == start and tonumber(held[3]) == length then
    count = tonumber(held[2])
  end
  local ok = 0
  if count + amount <= limit then ok = 1 else fits = false end
  counts[i], starts[i] = count, start
  reply[4*i-3], reply[4*i-2] = ok, count
  reply[4*i-1], reply[4*i] = start + length - now, string.format('%d', start)
end
if fits then
  for i = 1, #KEYS do
    local amount, length = tonumber(ARGV[3*i-2]), tonumber(ARGV[3*i])
    if amount > 0 then
      local count = counts[i] + amount
      redis.call('HSET', KEYS[i], 'w', string.format('%d', starts[i]), 'n',
                 string.format('%d', count), 'l', string.format('%d', length))
      redis.call('PEXPIREAT', KEYS[i], string.format('%d', starts[i] + length))
      reply[4*i-2] = count
    end
  end
end
return reply
"""

# KEYS counters; ARGV delta, then each key's window start → how many were adjusted (those
# whose window is gone are left alone)
_ADJUST_MANY = """
local delta, adjusted = tonumber(ARGV[1]), 0
for i = 1, #KEYS do
  local held = redis.call('HMGET', KEYS[i], 'w', 'n')
  if held[1] and held[1] == ARGV[i+1] then
    local count = tonumber(held[2]) + delta
    if count < 0 then count = 0 end
    redis.call('HSET', KEYS[i], 'n', string.format('%d', count))
    adjusted = adjusted + 1
  end
end
return adjusted
"""

# A limiter must answer quickly or not at all: a request should not hang on a lost Redis.
_CONNECT_TIMEOUT_S = 2.0
_COMMAND_TIMEOUT_S = 2.0


class RedisCounter(Counter):
    def __init__(
        self, client: aioredis.Redis, *, prefix: str = "shipway:counter:", owns_client: bool = False
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._owns_client = owns_client
        self._hit = LuaScript(_HIT_MANY, "the rate limits")
        self._adjust = LuaScript(_ADJUST_MANY, "the rate limits")

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "shipway:counter:") -> RedisCounter:
        """A counter with its own connection pool to ``url`` (closed by ``close``)."""
        client = aioredis.Redis.from_url(
            url,
            socket_connect_timeout=_CONNECT_TIMEOUT_S,
            socket_timeout=_COMMAND_TIMEOUT_S,
            health_check_interval=30,
        )
        return cls(client, prefix=prefix, owns_client=True)

    async def start(self) -> None:
        await redis_call(self._client.ping(), "the rate limits")

    async def close(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def _hit_many(self, hits: Sequence[Hit]) -> list[CounterResult]:
        prefix = self._prefix
        keys = [prefix + hit.key for hit in hits]
        args: list[int] = []
        for hit in hits:
            args += (hit.amount, hit.limit, window_ms(hit.window_s))
        reply = await self._hit.run(self._client, len(keys), *keys, *args)
        return [
            CounterResult(
                allowed=reply[i] == 1,
                limit=hit.limit,
                remaining=max(hit.limit - reply[i + 1], 0),
                reset_after_s=reply[i + 2] / 1000,
                window=int(reply[i + 3]),
            )
            for i, hit in zip(range(0, 4 * len(hits), 4), hits, strict=True)
        ]

    async def _adjust_many(self, held: Sequence[tuple[str, int]], delta: int) -> None:
        prefix = self._prefix
        keys = [prefix + key for key, _ in held]
        await self._adjust.run(self._client, len(keys), *keys, delta, *[w for _, w in held])
