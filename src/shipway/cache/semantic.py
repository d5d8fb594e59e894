"""The semantic cache's vectors: searched in this process, shared through Redis by replicas.

Every process keeps its own ``VectorIndex`` per model (a search is then a matrix product,
no round trip). Alone, that index is the whole truth. With Redis, every vector is also
appended to the model's stream, and ``sync`` reads what the other replicas appended since
the last read, one ``XREAD`` per lookup (a catch-up after start reads page by page).
Lookups that arrive while a read is in flight share it instead of queueing their own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from shipway.cache.keys import CacheKey
from shipway.cache.policy import CachePolicy
from shipway.cache.vector_index import VectorIndex, unit
from shipway.store.cache_redis import RedisCacheStore, VectorRecord

__all__ = ["SemanticIndex"]

_PAGE = 1000


class SemanticIndex:
    def __init__(self, shared: RedisCacheStore | None, clock: Callable[[], float]) -> None:
        self._shared = shared
        self._clock = clock
        self._indexes: dict[str, VectorIndex] = {}
        self._cursors: dict[str, str] = {}
        self._reads: dict[str, asyncio.Task[None]] = {}

    async def sync(self, model: str, policy: CachePolicy) -> None:
        """Learn the vectors other replicas added (nothing to do without Redis)."""
        if self._shared is None:
            return
        task = self._reads.get(model)
        if task is None:
            task = asyncio.ensure_future(self._read(model, policy))
            self._reads[model] = task
            task.add_done_callback(lambda done: self._read_done(model, done))
        # Shielded: a caller that goes away must not cancel the read the others wait on.
        await asyncio.shield(task)

    async def close(self) -> None:
        reads = list(self._reads.values())
        for task in reads:
            task.cancel()
        await asyncio.gather(*reads, return_exceptions=True)

    def nearest(self, key: CacheKey, vector: NDArray[np.float32]) -> tuple[str, float] | None:
        index = self._indexes.get(key.model)
        if index is None:
            return None
        threshold = key.policy.semantic_threshold
        return index.nearest(key.partition, vector, threshold=threshold, now=self._clock())

    async def add(self, key: CacheKey, vector: NDArray[np.float32]) -> None:
        policy = key.policy
        expires_at = self._clock() + policy.ttl_s
        # Indexed here at once (this replica need not wait for its own write to come back
        # through the stream, where it is then simply replaced).
        self._index(key.model, policy).add(key.partition, key.exact, vector, expires_at)
        if self._shared is not None:
            record = VectorRecord(key.partition, key.exact, vector.tobytes(), expires_at)
            await self._shared.append_vector(
                key.model, record, ttl_s=policy.ttl_s, max_entries=policy.max_entries
            )

    def forget(self, model: str, digest: str) -> None:
        """Drop a vector whose answer is gone (evicted or expired in the answer store)."""
        index = self._indexes.get(model)
        if index is not None:
            index.remove(digest)

    def _index(self, model: str, policy: CachePolicy) -> VectorIndex:
        index = self._indexes.get(model)
        if index is None:
            index = self._indexes[model] = VectorIndex(policy.max_entries)
        return index

    async def _read(self, model: str, policy: CachePolicy) -> None:
        assert self._shared is not None
        index = self._index(model, policy)
        page = min(policy.max_entries, _PAGE)
        while True:
            cursor = self._cursors.get(model, "0-0")
            cursor, records = await self._shared.read_vectors(model, cursor, page)
            self._cursors[model] = cursor
            now = self._clock()
            for record in records:
                vector = unit(np.frombuffer(record.vector, dtype=np.float32))
                if vector is not None and record.expires_at > now:
                    index.add(record.partition, record.digest, vector, record.expires_at)
            if len(records) < page:
                return

    def _read_done(self, model: str, task: asyncio.Task[None]) -> None:
        if self._reads.get(model) is task:
            del self._reads[model]
        if not task.cancelled():
            task.exception()  # seen by the waiters; retrieved so asyncio does not warn
