"""The response cache in Redis, shared by every replica.

    {prefix}a:{digest}   an answer (opaque bytes), expiring with its TTL
    {prefix}lru:{model}  sorted set: digest → last use (µs: ms would tie); past
                         ``max_entries`` the least recently used answers are popped and
                         deleted
    {prefix}v:{model}    stream of the semantic cache's vectors (partition, digest, float32
                         bytes, expiry), trimmed to about ``max_entries``; each replica reads
                         it from where it last stopped into its own in-memory index

A hit is one command (a script: ``GET`` and, when found, the LRU touch); a put is one
pipeline, plus one more round trip when it has to evict. Reading the vector stream is one
``XREAD`` of what was added since the last read. An entry the sorted set has not seen used
within a TTL has expired, so ``ZREMRANGEBYSCORE`` drops it from the count.

Connection failures are raised as ``StoreUnavailable`` after at most one immediate retry
(redis-py's default backs off for seconds, which a cache lookup must not wait for).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from shipway.store.redis_scripts import LuaScript, redis_call

__all__ = ["RedisCacheStore", "VectorRecord"]

# KEYS answer, lru; ARGV digest, now_us → the answer or nil (touched in the LRU when found)
_GET = """
local answer = redis.call('GET', KEYS[1])
if answer then redis.call('ZADD', KEYS[2], 'XX', ARGV[2], ARGV[1]) end
return answer
"""

# A cache answers quickly or not at all: a request must not wait on a lost Redis.
_TIMEOUT_S = 1.0
_WHAT = "the response cache"


@dataclass(frozen=True, slots=True)
class VectorRecord:
    partition: str
    digest: str
    vector: bytes  # float32, native byte order
    expires_at: float  # wall-clock seconds


class RedisCacheStore:
    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = "shipway:cache:",
        clock: Callable[[], float],
        owns_client: bool = False,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._clock = clock
        self._owns_client = owns_client
        self._get = LuaScript(_GET, _WHAT)

    @classmethod
    def from_url(
        cls, url: str, *, prefix: str = "shipway:cache:", clock: Callable[[], float]
    ) -> RedisCacheStore:
        """A store with its own connection pool to ``url`` (closed by ``close``)."""
        client = aioredis.Redis.from_url(
            url,
            socket_connect_timeout=_TIMEOUT_S,
            socket_timeout=_TIMEOUT_S,
            retry=Retry(NoBackoff(), 1),
            health_check_interval=30,
        )
        return cls(client, prefix=prefix, clock=clock, owns_client=True)

    async def start(self) -> None:
        await self._call(self._client.ping())

    async def close(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def get(self, model: str, digest: str) -> bytes | None:
        keys = (self._prefix + "a:" + digest, self._prefix + "lru:" + model)
        args = (digest, self._now_us())
        answer = await self._get.run(self._client, 2, *keys, *args)
        return answer if isinstance(answer, bytes) else None

    async def put(
        self, model: str, digest: str, payload: bytes, *, ttl_s: float, max_entries: int
    ) -> None:
        lru = self._prefix + "lru:" + model
        now, ttl_ms = self._now_us(), _ms(ttl_s)
        pipe = self._client.pipeline(transaction=False)
        pipe.set(self._prefix + "a:" + digest, payload, px=ttl_ms)
        pipe.zadd(lru, {digest: now})
        pipe.zremrangebyscore(lru, "-inf", now - ttl_ms * 1000)
        pipe.pexpire(lru, ttl_ms)
        pipe.zcard(lru)
        replies = await self._call(pipe.execute())
        excess = int(replies[-1]) - max_entries
        if excess > 0:
            popped = await self._call(self._client.zpopmin(lru, excess))
            if popped:
                names = [self._prefix + "a:" + _text(member) for member, _ in popped]
                await self._call(self._client.delete(*names))

    async def append_vector(
        self, model: str, record: VectorRecord, *, ttl_s: float, max_entries: int
    ) -> None:
        stream = self._prefix + "v:" + model
        fields: dict[Any, Any] = {
            "p": record.partition,
            "d": record.digest,
            "v": record.vector,
            "x": repr(record.expires_at),
        }
        pipe = self._client.pipeline(transaction=False)
        pipe.xadd(stream, fields, maxlen=max_entries, approximate=True)
        pipe.pexpire(stream, _ms(ttl_s))  # an idle model's stream goes with its last answer
        await self._call(pipe.execute())

    async def read_vectors(
        self, model: str, after: str, count: int
    ) -> tuple[str, list[VectorRecord]]:
        """Up to ``count`` vectors added after stream id ``after``, and the id to read on from."""
        reply = await self._call(self._client.xread({self._prefix + "v:" + model: after}, count))
        if not reply:
            return after, []
        entries = reply[0][1]
        records = [
            VectorRecord(
                partition=_text(fields[b"p"]),
                digest=_text(fields[b"d"]),
                vector=bytes(fields[b"v"]),
                expires_at=float(fields[b"x"]),
            )
            for _, fields in entries
        ]
        return _text(entries[-1][0]), records

    def _now_us(self) -> int:
        # Exact in a double (2**53 µs is 285 years); milliseconds tie in a burst of puts.
        return int(self._clock() * 1_000_000)

    async def _call(self, awaitable: Any) -> Any:
        return await redis_call(awaitable, _WHAT)


def _ms(seconds: float) -> int:
    return max(int(seconds * 1000), 1)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
