"""Two replicas' response caches on one real Redis share answers and semantic vectors."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
import redis

from shipway.cache import CacheKey, ResponseCache
from shipway.config import load_settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PARIS = "What is the capital of France?"
PARAPHRASE = "Tell me the capital city of France."

Replica = Callable[..., Awaitable[ResponseCache]]


@pytest.fixture(scope="module")
def embed() -> Callable[[list[str]], Awaitable[list[list[float]]]]:
    """The embedded all-MiniLM-L6-v2, run in this process."""
    from sentence_transformers import SentenceTransformer

    from shipway.backends.model_files import embedded_embedding_model_path

    path = str(embedded_embedding_model_path())
    model = SentenceTransformer(path, device="cpu", local_files_only=True)

    async def encode(texts: list[str]) -> list[list[float]]:
        rows: np.ndarray[Any, Any] = model.encode(texts)
        return rows.tolist()  # type: ignore[no-any-return]

    return encode


@pytest.fixture
def prefix(redis_url: str) -> Any:
    name = f"shipway-test:{uuid.uuid4().hex}:"
    yield name
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=name + "*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
async def replica(
    redis_url: str, prefix: str, embed: Callable[[list[str]], Awaitable[list[list[float]]]]
) -> AsyncIterator[Replica]:
    """Builds caches that share one Redis (and key prefix), as a deployment's replicas do."""
    built: list[ResponseCache] = []

    async def build(url: str = redis_url, **cache: Any) -> ResponseCache:
        settings = load_settings(None, {"cache": cache})
        made = ResponseCache(settings, redis_url=url, embed=embed, prefix=prefix)
        await made.start()
        built.append(made)
        return made

    yield build
    for made in built:
        await made.close()


def key(
    cache: ResponseCache,
    question: str = PARIS,
    *,
    scope: str = "team:1",
    version: str = "v1",
    **changes: Any,
) -> CacheKey:
    body = {"model": "chat", "messages": [{"role": "user", "content": question}], "temperature": 0}
    made = cache.key("chat", version, scope, {**body, **changes}, local_model=False)
    assert made is not None
    return made


def answer(text: str = "Paris.") -> dict[str, Any]:
    message = {"role": "assistant", "content": text, "refusal": None}
    return {
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
    }


async def test_an_answer_put_on_one_replica_is_an_exact_hit_on_the_other(replica: Replica) -> None:
    one, two = await replica(), await replica()
    assert await two.get(key(two)) is None
    await one.put(key(one), answer(), 0.003)
    hit = await two.get(key(two))
    assert hit is not None and hit.kind == "exact"
    assert (hit.completion, hit.cost) == (answer(), 0.003)


async def test_scope_and_model_version_keep_answers_apart(replica: Replica) -> None:
    one, two = await replica(semantic=True), await replica(semantic=True)
    await one.put(key(one, scope="team:1"), answer(), 0.0)
    assert await two.get(key(two, scope="team:2")) is None
    assert await two.get(key(two, PARAPHRASE, scope="team:2")) is None
    assert await two.get(key(two, version="v2")) is None
    assert await two.get(key(two, scope="team:1")) is not None


async def test_a_paraphrase_is_a_semantic_hit_on_another_replica(replica: Replica) -> None:
    one, two = await replica(semantic=True), await replica(semantic=True)
    await one.put(key(one), answer("Paris."), 0.01)
    hit = await two.get(key(two, PARAPHRASE))
    assert hit is not None and hit.kind == "semantic" and hit.completion == answer("Paris.")
    assert hit.similarity is not None and hit.similarity >= 0.9
    assert await two.get(key(two, "What is the capital of Germany?")) is None
    # `two` has read the stream already: what `one` adds later arrives by the next read.
    await one.put(key(one, "Who wrote Pride and Prejudice?"), answer("Jane Austen."), 0.0)
    later = await two.get(key(two, "Who is the author of Pride and Prejudice?"))
    assert later is not None and later.completion == answer("Jane Austen.")


async def test_a_different_max_tokens_is_never_a_semantic_hit(replica: Replica) -> None:
    one, two = await replica(semantic=True), await replica(semantic=True)
    await one.put(key(one, max_tokens=10), answer(), 0.0)
    assert await two.get(key(two, PARAPHRASE, max_tokens=11)) is None
    assert await two.get(key(two, PARAPHRASE, max_tokens=10)) is not None


async def test_answers_expire_in_redis(replica: Replica) -> None:
    one, two = await replica(ttl_s=0.2, semantic=True), await replica(ttl_s=0.2, semantic=True)
    await one.put(key(one), answer(), 0.0)
    assert await two.get(key(two)) is not None
    await asyncio.sleep(0.5)
    assert await two.get(key(two)) is None
    assert await two.get(key(two, PARAPHRASE)) is None


async def test_the_least_recently_used_answer_goes_past_max_entries(
    replica: Replica, redis_url: str, prefix: str
) -> None:
    one, two = await replica(max_entries=2), await replica(max_entries=2)
    await one.put(key(one, "one"), answer("1"), 0.0)
    await one.put(key(one, "two"), answer("2"), 0.0)
    assert await two.get(key(two, "one")) is not None  # `two` is now the least recently used
    await two.put(key(two, "three"), answer("3"), 0.0)
    assert await one.get(key(one, "two")) is None
    assert (
        await one.get(key(one, "one")) is not None and await one.get(key(one, "three")) is not None
    )
    client = redis.Redis.from_url(redis_url)
    try:
        assert len(list(client.scan_iter(match=prefix + "a:*"))) == 2
    finally:
        client.close()


class Proxy:
    """A TCP relay to Redis that can be cut, as a network or Redis failure would."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()
        await self.server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers += [writer, up_writer]

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except OSError:
                pass
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def test_a_redis_that_goes_away_is_a_miss_not_an_error(
    replica: Replica, redis_url: str
) -> None:
    parts = urlsplit(redis_url)
    proxy = Proxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    port = await proxy.start()
    cache = await replica(f"redis://127.0.0.1:{port}{parts.path}", semantic=True)
    await cache.put(key(cache), answer(), 0.0)
    assert await cache.get(key(cache)) is not None
    await proxy.stop()
    assert await cache.get(key(cache)) is None
    assert await cache.get(key(cache, PARAPHRASE)) is None
    await cache.put(key(cache, "Who wrote Emma?"), answer(), 0.0)
    assert await cache.get(key(cache, "Who wrote Emma?")) is None
