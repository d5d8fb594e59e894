"""The budget ledger in Redis: exact across every replica that shares it.

Each counter is one integer string key, ``<prefix><budget>|<window>``, expiring at its
``expires_at`` (a little after its window ends). ``reserve`` and ``adjust`` are one Lua script
each, which Redis runs atomically: replicas racing for the last of a budget cannot both pass
a check only one fits, and ``reserve`` reads every counter before it writes any, so it counts
all its items or none. ``seed`` is one ``SET … NX EXAT``; ``read`` one ``MGET``. Every key a
script touches is declared, as Redis Cluster requires; there, give the ledger a prefix with a
hash tag (``shipway:{budget}:``) so one request's counters share a slot.

The scripts run by ``EVALSHA``; a Redis that lost its script cache is sent them again on the
``NOSCRIPT`` error (as ``redis_counter.py`` does).
"""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis

from shipway.store.budget_ledger import BudgetLedger, LedgerKey, ReserveItem, ReserveResult
from shipway.store.redis_scripts import LuaScript, redis_call

__all__ = ["RedisBudgetLedger"]


# KEYS counters; ARGV amount, limit (-1: none), expires_at for each key in turn
# → allowed (1/0), then fits (1/0) and total for each key in turn
_RESERVE = """
local totals, fits, allowed = {}, {}, 1
for i = 1, #KEYS do
  local total = tonumber(redis.call('GET', KEYS[i]) or '0')
  local amount, limit = tonumber(ARGV[3*i-2]), tonumber(ARGV[3*i-1])
  totals[i] = total
  if limit >= 0 and total + amount > limit then fits[i] = 0; allowed = 0 else fits[i] = 1 end
end
local reply = {allowed}
for i = 1, #KEYS do
  if allowed == 1 then
    totals[i] = redis.call('INCRBY', KEYS[i], ARGV[3*i-2])
    redis.call('EXPIREAT', KEYS[i], ARGV[3*i])
  end
  reply[2*i], reply[2*i+1] = fits[i], totals[i]
end
return reply
"""

# KEYS counters; ARGV delta, expires_at for each key in turn → each key's total after.
# A missing counter is created only by a positive delta; none goes below zero. Totals are
# written through %d: Lua's own conversion of a double (%.14g) may use exponent form.
_ADJUST = """
local reply = {}
for i = 1, #KEYS do
  local held = redis.call('GET', KEYS[i])
  local total = tonumber(held or '0') + tonumber(ARGV[2*i-1])
  if total < 0 then total = 0 end
  if held or total > 0 then
    redis.call('SET', KEYS[i], string.format('%d', total))
    redis.call('EXPIREAT', KEYS[i], ARGV[2*i])
  end
  reply[i] = total
end
return reply
"""

# A budget check must answer quickly or not at all: a request should not hang on a lost Redis.
_CONNECT_TIMEOUT_S = 2.0
_COMMAND_TIMEOUT_S = 2.0


class RedisBudgetLedger(BudgetLedger):
    def __init__(
        self, client: aioredis.Redis, *, prefix: str = "shipway:budget:", owns_client: bool = False
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._owns_client = owns_client
        self._reserve_script = LuaScript(_RESERVE, "the budgets")
        self._adjust_script = LuaScript(_ADJUST, "the budgets")

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "shipway:budget:") -> RedisBudgetLedger:
        """A ledger with its own connection pool to ``url`` (closed by ``close``)."""
        client = aioredis.Redis.from_url(
            url,
            socket_connect_timeout=_CONNECT_TIMEOUT_S,
            socket_timeout=_COMMAND_TIMEOUT_S,
            health_check_interval=30,
        )
        return cls(client, prefix=prefix, owns_client=True)

    def redis_key(self, key: LedgerKey) -> str:
        return f"{self._prefix}{key.budget}|{key.window}"

    async def start(self) -> None:
        await redis_call(self._client.ping(), "the budgets")

    async def close(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def _reserve(self, items: Sequence[ReserveItem]) -> ReserveResult:
        keys = [self.redis_key(item.key) for item in items]
        args: list[int] = []
        for key, amount, limit in items:
            args += (amount, -1 if limit is None else limit, key.expires_at)
        reply = await self._reserve_script.run(self._client, len(keys), *keys, *args)
        return ReserveResult(
            reply[0] == 1,
            tuple(int(total) for total in reply[2::2]),
            tuple(fit == 1 for fit in reply[1::2]),
        )

    async def _adjust(self, items: Sequence[tuple[LedgerKey, int]]) -> list[int]:
        keys = [self.redis_key(key) for key, _ in items]
        args: list[int] = []
        for key, delta in items:
            args += (delta, key.expires_at)
        reply = await self._adjust_script.run(self._client, len(keys), *keys, *args)
        return [int(total) for total in reply]

    async def _read(self, keys: Sequence[LedgerKey]) -> list[int]:
        keys_ = [self.redis_key(key) for key in keys]
        values = await redis_call(self._client.mget(keys_), "the budgets")
        return [0 if value is None else int(value) for value in values]

    async def _seed(self, key: LedgerKey, amount: int) -> bool:
        done = await redis_call(
            self._client.set(self.redis_key(key), amount, nx=True, exat=key.expires_at),
            "the budgets",
        )
        return bool(done)
