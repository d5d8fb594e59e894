"""The response cache in memory: hits, TTL, LRU, scoping and the semantic match."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

from shipway.cache import CacheKey, ResponseCache
from shipway.config import ShipwaySettings, load_settings
from shipway.config_costs import CacheSettings

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the real-model test never reaches for a hub

PARIS = "What is the capital of France?"
PARAPHRASE = "Tell me the capital city of France."
# Unit vectors of a made-up embedding: cos(PARIS, PARAPHRASE) = 0.96, the rest ~0.
TABLE = {
    PARIS: [1.0, 0.0, 0.0],
    PARAPHRASE: [0.96, 0.28, 0.0],
    "How do I bake bread?": [0.0, 0.0, 1.0],
}


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class TableEmbed:
    """A deterministic stand-in for the embedding model (see the real-model test below)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.failing = False

    async def __call__(self, texts: list[str]) -> list[list[float]]:
        self.calls += texts
        if self.failing:
            raise RuntimeError("embedding model down")
        return [TABLE[text] for text in texts]


def settings(**cache: Any) -> ShipwaySettings:
    return load_settings(
        None,
        {
            "cache": cache,
            "models": {"other": {"backend": "llamacpp", "cache": {"semantic": False}}},
        },
    )


def body(question: str = PARIS, **changes: Any) -> dict[str, Any]:
    return {
        "model": "chat",
        "messages": [{"role": "user", "content": question}],
        "temperature": 0,
        "max_tokens": 32,
        **changes,
    }


def answer(text: str = "Paris.") -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "chat",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
    }


def make(
    clock: Clock | None = None, embed: TableEmbed | None = None, **cache: Any
) -> ResponseCache:
    return ResponseCache(settings(**cache), redis_url=None, embed=embed, clock=clock or Clock())


KeyOf = Callable[..., CacheKey]


def key_of(cache: ResponseCache) -> KeyOf:
    def build(
        question: str = PARIS,
        *,
        scope: str = "team:1",
        version: str = "v1",
        model: str = "chat",
        **changes: Any,
    ) -> CacheKey:
        key = cache.key(model, version, scope, body(question, **changes), local_model=False)
        assert key is not None
        return key

    return build


async def test_a_repeated_request_is_an_exact_hit_with_the_answer_and_its_cost() -> None:
    cache = make()
    key = key_of(cache)
    assert await cache.get(key()) is None
    await cache.put(key(), answer(), 0.0042)
    hit = await cache.get(key())
    assert hit is not None
    assert (hit.completion, hit.cost, hit.kind, hit.similarity) == (answer(), 0.0042, "exact", None)
    hit.completion["choices"].clear()  # the caller may change what it got ...
    again = await cache.get(key())
    assert again is not None and again.completion == answer()  # ... the cache keeps its own


async def test_a_sampled_request_is_not_cacheable_unless_the_model_says_always() -> None:
    assert make().key("chat", "v1", "team:1", body(temperature=0.8), local_model=False) is None
    always = make(exact="always")
    assert always.key("chat", "v1", "team:1", body(temperature=0.8), local_model=False) is not None


async def test_an_entry_lives_for_its_ttl() -> None:
    clock = Clock()
    cache = make(clock, ttl_s=60)
    key = key_of(cache)
    await cache.put(key(), answer(), 0.0)
    clock.now += 59
    assert await cache.get(key()) is not None
    clock.now += 1
    assert await cache.get(key()) is None


async def test_past_its_ttl_an_entry_is_only_served_stale_until_stale_s_ends() -> None:
    clock = Clock()
    cache = make(clock, ttl_s=60, stale_s=30)
    key = key_of(cache)
    await cache.put(key(), answer(), 0.25)
    clock.now += 60
    assert await cache.get(key()) is None  # past its TTL: a miss
    stale = await cache.get_stale(key())
    assert stale is not None and stale.kind == "stale" and stale.cost == 0.25
    clock.now += 30
    assert await cache.get_stale(key()) is None  # kept no longer


async def test_past_max_entries_the_least_recently_used_goes() -> None:
    cache = make(max_entries=2)
    key = key_of(cache)
    first, second, third = key("one"), key("two"), key("three")
    await cache.put(first, answer("1"), 0.0)
    await cache.put(second, answer("2"), 0.0)
    assert await cache.get(first) is not None  # now `second` is the least recently used
    await cache.put(third, answer("3"), 0.0)
    assert await cache.get(second) is None
    assert await cache.get(first) is not None and await cache.get(third) is not None


async def test_an_answer_over_max_entry_bytes_is_not_kept() -> None:
    cache = make(max_entry_bytes=1024)
    key = key_of(cache)
    await cache.put(key(), answer("x" * 2000), 0.0)
    assert await cache.get(key()) is None
    await cache.put(key(), answer("short"), 0.0)
    assert await cache.get(key()) is not None


async def test_another_scope_or_model_version_never_reads_the_answer() -> None:
    cache = make(semantic=True, embed=TableEmbed())
    key = key_of(cache)
    await cache.put(key(scope="team:1"), answer(), 0.0)
    assert await cache.get(key(scope="team:2")) is None
    assert await cache.get(key(scope="key:7")) is None
    assert await cache.get(key(PARAPHRASE, scope="team:2")) is None
    assert await cache.get(key(version="v2")) is None
    assert await cache.get(key(scope="team:1")) is not None


async def test_a_paraphrase_above_the_threshold_is_a_semantic_hit() -> None:
    embed = TableEmbed()
    cache = make(embed=embed, semantic=True, semantic_threshold=0.9)
    key = key_of(cache)
    stored = key()
    assert await cache.get(stored) is None
    await cache.put(stored, answer(), 0.01)
    assert embed.calls == [PARIS]  # the put reused the vector the lookup made
    hit = await cache.get(key(PARAPHRASE))
    assert hit is not None and hit.kind == "semantic" and hit.completion == answer()
    assert hit.similarity == pytest.approx(0.96, abs=1e-6) and hit.cost == 0.01
    assert await cache.get(key("How do I bake bread?")) is None


async def test_a_threshold_above_the_similarity_misses() -> None:
    cache = make(embed=TableEmbed(), semantic=True, semantic_threshold=0.97)
    key = key_of(cache)
    await cache.put(key(), answer(), 0.0)
    assert await cache.get(key(PARAPHRASE)) is None


@pytest.mark.parametrize(
    "changes",
    [
        {"max_tokens": 33},
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
        {"scope": "team:2"},
        {"version": "v2"},
    ],
)
async def test_a_semantic_match_needs_everything_else_equal(changes: dict[str, Any]) -> None:
    cache = make(embed=TableEmbed(), semantic=True)
    key = key_of(cache)
    await cache.put(key(), answer(), 0.0)
    assert await cache.get(key(PARAPHRASE, **changes)) is None
    assert await cache.get(key(PARAPHRASE)) is not None


async def test_semantic_is_per_model_and_off_by_default() -> None:
    embed = TableEmbed()
    cache = make(embed=embed, semantic=True)  # the model `other` turns it off
    key = key_of(cache)
    await cache.put(key(model="other"), answer(), 0.0)
    assert await cache.get(key(PARAPHRASE, model="other")) is None
    assert embed.calls == []
    assert CacheSettings().semantic is False


async def test_an_expired_answer_is_no_semantic_hit() -> None:
    clock = Clock()
    cache = make(clock, embed=TableEmbed(), semantic=True, ttl_s=10)
    key = key_of(cache)
    await cache.put(key(), answer(), 0.0)
    clock.now += 10
    assert await cache.get(key(PARAPHRASE)) is None


async def test_a_failing_embedding_model_is_a_miss_and_the_exact_cache_still_works() -> None:
    embed = TableEmbed()
    cache = make(embed=embed, semantic=True)
    key = key_of(cache)
    embed.failing = True
    assert await cache.get(key()) is None
    await cache.put(key(), answer(), 0.0)
    assert await cache.get(key()) is not None
    assert await cache.get(key(PARAPHRASE)) is None
    embed.failing = False
    assert await cache.get(key(PARAPHRASE)) is None  # the answer was stored without a vector


async def test_the_real_embedding_model_hits_a_paraphrase_at_the_default_threshold() -> None:
    from sentence_transformers import SentenceTransformer

    from shipway.backends.model_files import embedded_embedding_model_path

    model = SentenceTransformer(
        str(embedded_embedding_model_path()), device="cpu", local_files_only=True
    )

    async def embed(texts: list[str]) -> list[list[float]]:
        return [list(map(float, row)) for row in model.encode(texts)]

    threshold = CacheSettings().semantic_threshold
    cache = ResponseCache(settings(semantic=True), redis_url=None, embed=embed)
    key = key_of(cache)
    await cache.put(key(), answer(), 0.0)
    hit = await cache.get(key(PARAPHRASE))
    assert hit is not None and hit.kind == "semantic"
    assert hit.similarity is not None and hit.similarity >= threshold
    for other in ("What is the capital of Germany?", "How do I bake sourdough bread?"):
        assert await cache.get(key(other)) is None
