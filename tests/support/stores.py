"""Counters that share their counts, for the counter contract tests."""

from __future__ import annotations

import uuid

import redis

from shipway.store import Counter, MemoryCounter, RedisCounter


class Replicas:
    """Counters that share their counts, as the replicas of one deployment do."""

    def __init__(self, kind: str, url: str | None) -> None:
        self.kind = kind
        self.url = url
        self.prefix = f"shipway-test:{uuid.uuid4().hex}:"
        self._memory = MemoryCounter()
        self._built: list[Counter] = []

    async def counter(self) -> Counter:
        if self.url is None:
            return self._memory  # one process: every "replica" is the same memory
        counter = RedisCounter.from_url(self.url, prefix=self.prefix)
        await counter.start()
        self._built.append(counter)
        return counter

    async def close(self) -> None:
        for counter in self._built:
            await counter.close()
        if self.url is not None:
            client = redis.Redis.from_url(self.url)
            try:
                keys = list(client.scan_iter(match=self.prefix + "*", count=1000))
                if keys:
                    client.delete(*keys)
            finally:
                client.close()
