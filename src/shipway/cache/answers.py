"""Where cached answers are kept: one interface, kept in this process or in Redis.

An answer is opaque bytes under its key's digest, counted against its model's
``max_entries`` (least recently used out first) and served until its TTL runs out.
``store/cache_redis.py`` holds the Redis implementation that replicas share.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

__all__ = ["AnswerStore", "MemoryAnswers"]


class AnswerStore(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def get(self, model: str, digest: str) -> bytes | None:
        """The answer, counted as just used; None if absent or expired."""
        ...

    async def put(
        self, model: str, digest: str, payload: bytes, *, ttl_s: float, max_entries: int
    ) -> None:
        """Keep ``payload`` for ``ttl_s``; past ``max_entries`` the least recently used go."""
        ...


class MemoryAnswers:
    """This process's answers, per model in least-recently-used order."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._models: dict[str, OrderedDict[str, tuple[float, bytes]]] = {}

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._models.clear()

    async def get(self, model: str, digest: str) -> bytes | None:
        entries = self._models.get(model)
        found = entries.get(digest) if entries is not None else None
        if entries is None or found is None:
            return None
        expires_at, payload = found
        if expires_at <= self._clock():
            del entries[digest]
            return None
        entries.move_to_end(digest)
        return payload

    async def put(
        self, model: str, digest: str, payload: bytes, *, ttl_s: float, max_entries: int
    ) -> None:
        entries = self._models.setdefault(model, OrderedDict())
        entries[digest] = (self._clock() + ttl_s, payload)
        entries.move_to_end(digest)
        while len(entries) > max_entries:
            entries.popitem(last=False)
