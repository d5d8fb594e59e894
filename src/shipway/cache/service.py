"""The response cache the pipeline asks before dispatch and tells after an answer.

    key  →  get: exact answer by digest; else, when the model has `semantic` on, embed the
                 question (while the vector stream is read, with Redis) and take the nearest
                 cached question of the same partition at cosine >= threshold
         →  put: the answer under its digest (size bound, TTL, LRU per model); with
                 `semantic`, its vector too (the one ``get`` computed, not embedded again)

The cache is an optimisation, never a reason to fail: an unreachable Redis, a failing
embedding model or an answer that is not JSON make a miss (or a skipped put), logged at
most once a minute per kind. After a Redis failure the store is left alone for a second,
so a lost Redis costs the requests of that second one failed call each, not a timeout each.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np
import orjson
import structlog
from numpy.typing import NDArray

from shipway.cache.answers import AnswerStore, MemoryAnswers
from shipway.cache.keys import CacheKey, build_key
from shipway.cache.policy import CachePolicy, resolve_policy
from shipway.cache.semantic import SemanticIndex
from shipway.cache.vector_index import unit
from shipway.config import ShipwaySettings
from shipway.store.cache_redis import RedisCacheStore

__all__ = ["CacheHit", "Embed", "ResponseCache"]

Embed = Callable[[list[str]], Awaitable[list[list[float]]]]
T = TypeVar("T")

_LOG_EVERY_S = 60.0
_STORE_PAUSE_S = 1.0


@dataclass(frozen=True, slots=True)
class CacheHit:
    completion: dict[str, Any]
    cost: float  # what the original call cost: the money this hit saves
    kind: Literal["exact", "semantic", "stale"]
    similarity: float | None  # cosine of a semantic hit


class ResponseCache:
    def __init__(
        self,
        settings: ShipwaySettings,
        *,
        redis_url: str | None,
        embed: Embed | None,
        clock: Callable[[], float] = time.time,
        prefix: str = "shipway:cache:",
    ) -> None:
        self._base = resolve_policy(settings.cache, None)
        self._policies = {
            alias: resolve_policy(settings.cache, model.cache)
            for alias, model in settings.models.items()
        }
        shared = (
            RedisCacheStore.from_url(redis_url, prefix=prefix, clock=clock) if redis_url else None
        )
        self._answers: AnswerStore = shared if shared is not None else MemoryAnswers(clock)
        self._semantic = SemanticIndex(shared, clock)
        self._embed = embed
        self._clock = clock
        self._store_paused_until = 0.0
        self._logged_at: dict[str, float] = {}
        self._log = structlog.get_logger("shipway.cache")

    async def start(self) -> None:
        """Check the store answers; a failure is logged, not raised (lookups then miss)."""
        await self._attempt("store", self._answers.start)

    async def close(self) -> None:
        await self._semantic.close()
        await self._answers.close()

    def policy(self, model: str) -> CachePolicy:
        return self._policies.get(model, self._base)

    def key(
        self,
        model: str,
        model_version: str,
        scope: str,
        body: dict[str, Any],
        *,
        local_model: bool,
    ) -> CacheKey | None:
        """The request's key, or None when the model's policy does not cache it."""
        policy = self._policies.get(model, self._base)
        return build_key(model, model_version, scope, body, local_model=local_model, policy=policy)

    async def get(self, key: CacheKey) -> CacheHit | None:
        ok, payload = await self._attempt("store", lambda: self._answers.get(key.model, key.exact))
        if payload is not None:
            hit = _decode(payload, "exact", None, self._clock())
            if hit is not None:
                return hit
        if not ok or key.text is None or self._embed is None:
            return None
        vector, _ = await asyncio.gather(
            self._vector(key),
            self._attempt("store", lambda: self._semantic.sync(key.model, key.policy)),
        )
        if vector is None:
            return None
        found = self._semantic.nearest(key, vector)
        if found is None:
            return None
        digest, similarity = found
        ok, payload = await self._attempt("store", lambda: self._answers.get(key.model, digest))
        if payload is None:
            if ok:
                self._semantic.forget(key.model, digest)
            return None
        return _decode(payload, "semantic", similarity, self._clock())

    async def get_stale(self, key: CacheKey) -> CacheHit | None:
        """The exact entry even past its TTL (within ``stale_s``): when nothing can answer."""
        _, payload = await self._attempt("store", lambda: self._answers.get(key.model, key.exact))
        return None if payload is None else _decode(payload, "stale", None, None)

    async def put(self, key: CacheKey, completion: dict[str, Any], cost: float) -> None:
        policy = key.policy
        fresh_until = self._clock() + policy.ttl_s
        try:
            payload = orjson.dumps(
                {"completion": completion, "cost": cost, "fresh_until": fresh_until}
            )
        except orjson.JSONEncodeError as exc:
            self._warn("encode", exc)
            return
        if len(payload) > policy.max_entry_bytes:
            return
        # Kept `stale_s` past its TTL: served only when every model failed (``get_stale``).
        keep_s = policy.ttl_s + policy.stale_s
        ok, _ = await self._attempt(
            "store",
            lambda: self._answers.put(
                key.model, key.exact, payload, ttl_s=keep_s, max_entries=policy.max_entries
            ),
        )
        if not ok or key.text is None or self._embed is None:
            return
        vector = key.vector[0] if key.vector else await self._vector(key)
        if vector is not None:
            await self._attempt("store", lambda: self._semantic.add(key, vector))

    async def _vector(self, key: CacheKey) -> NDArray[np.float32] | None:
        """The question's unit vector (kept on the key for ``put``), or None if it failed."""
        embed, text = self._embed, key.text
        assert embed is not None and text is not None

        async def one() -> NDArray[np.float32] | None:
            (row,) = await embed([text])
            return unit(row)

        _, vector = await self._attempt("embed", one)
        if vector is not None:
            key.vector.append(vector)
        return vector

    async def _attempt(
        self, what: str, action: Callable[[], Awaitable[T]]
    ) -> tuple[bool, T | None]:
        """(True, result), or (False, None) after logging a failure: never raises."""
        if what == "store" and time.monotonic() < self._store_paused_until:
            return False, None
        try:
            return True, await action()
        except Exception as exc:  # noqa: BLE001 — a cache failure must never fail the request
            if what == "store":
                self._store_paused_until = time.monotonic() + _STORE_PAUSE_S
            self._warn(what, exc)
            return False, None

    def _warn(self, what: str, exc: Exception) -> None:
        now = time.monotonic()
        last = self._logged_at.get(what)
        if last is None or now - last >= _LOG_EVERY_S:
            self._logged_at[what] = now
            self._log.warning("cache_unavailable", part=what, error=repr(exc))


def _decode(
    payload: bytes,
    kind: Literal["exact", "semantic", "stale"],
    similarity: float | None,
    now: float | None,
) -> CacheHit | None:
    """The entry as a hit; None when it is past its TTL (``now`` None: stale is fine)."""
    try:
        entry = orjson.loads(payload)
        if now is not None and now >= float(entry.get("fresh_until", math.inf)):
            return None
        return CacheHit(entry["completion"], float(entry["cost"]), kind, similarity)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None  # not written by this code (another version, or not an entry at all)
