"""Counters in Redis: exact across every replica that shares it.

Each call is one Lua script, which Redis runs atomically, so concurrent hits from any number
of replicas cannot both pass a check that only one fits. The window comes from the Redis
server's clock (``TIME``), so replicas whose clocks drift still agree on it. Each counter is
one hash (``w`` = window start, ``n`` = count) under one declared key, which keeps the scripts
valid on Redis Cluster too, and expires when its window ends.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shipway.errors import StoreUnavailable
from shipway.store.counter import Counter, CounterResult

__all__ = ["RedisCounter"]

# KEYS[1] counter; ARGV amount, limit, window_ms → {allowed, count, reset_ms, window_start}
_HIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local amount, limit, length = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local start = now - (now % length)
local count = 0
local held = redis.call('HMGET', KEYS[1], 'w', 'n', 'l')
if tonumber(held[1]) == start and tonumber(held[3]) == length then
  count = tonumber(held[2])
end
local allowed = 0
if count + amount <= limit then
  allowed = 1
  if amount > 0 then
    count = count + amount
    redis.call('HSET', KEYS[1], 'w', string.format('%d', start), 'n',
               string.format('%d', count), 'l', string.format('%d', length))
    redis.call('PEXPIREAT', KEYS[1], string.format('%d', start + length))
  end
end
return {allowed, count, start + length - now, string.format('%d', start)}
"""

# KEYS[1] counter; ARGV delta, window_start → 1 if adjusted, 0 if that window is gone
_ADJUST = """
local held = redis.call('HMGET', KEYS[1], 'w', 'n')
if not held[1] or held[1] ~= ARGV[2] then return 0 end
local count = tonumber(held[2]) + tonumber(ARGV[1])
if count < 0 then count = 0 end
redis.call('HSET', KEYS[1], 'n', string.format('%d', count))
return 1
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
        self._hit_script = client.register_script(_HIT)
        self._adjust_script = client.register_script(_ADJUST)

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
        await self._call(self._client.ping())

    async def close(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def _hit(self, key: str, amount: int, limit: int, window_ms: int) -> CounterResult:
        reply = await self._call(
            self._hit_script(keys=[self._prefix + key], args=[amount, limit, window_ms])
        )
        allowed, count, reset_ms, start = reply
        return CounterResult(
            allowed=bool(allowed),
            limit=limit,
            remaining=max(limit - int(count), 0),
            reset_after_s=int(reset_ms) / 1000,
            window=int(start),
        )

    async def _adjust(self, key: str, delta: int, window: int) -> None:
        await self._call(self._adjust_script(keys=[self._prefix + key], args=[delta, window]))

    async def _call(self, awaitable: Any) -> Any:
        try:
            return await awaitable
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise StoreUnavailable(
                f"Redis is unreachable ({exc}); check `redis_url` and that Redis is running"
            ) from exc
