"""The response cache: answers served again without touching a queue or a worker.

    keys.py          which requests are cached (`exact` mode, determinism) and their key:
                     scope, model, model version and every field that changes the answer;
                     `client_bypass` for the request headers that skip the cache
    policy.py        a model's cache settings (`cache` with `models.<alias>.cache` over it)
    service.py       `ResponseCache`: get (exact, then semantic) and put; never raises
    answers.py       the answer store interface and its in-memory, per-model LRU
    semantic.py      the semantic vectors: this process's index, fed from Redis by replicas
    vector_index.py  one model's vectors by partition, cosine search with NumPy
    stream_replay.py a stream assembled into a completion, a completion replayed as a stream

The Redis store (`store/cache_redis.py`) shares answers and vectors between replicas.
"""

from __future__ import annotations

from shipway.cache.keys import CacheKey, client_bypass
from shipway.cache.policy import CachePolicy
from shipway.cache.service import CacheHit, Embed, ResponseCache
from shipway.cache.stream_replay import StreamAssembler, replay_chunks

__all__ = [
    "CacheHit",
    "CacheKey",
    "CachePolicy",
    "Embed",
    "ResponseCache",
    "StreamAssembler",
    "client_bypass",
    "replay_chunks",
]
