"""Cache keys: what is cached, and which differences between two requests change the key."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.datastructures import Headers

from shipway.cache.keys import SEMANTIC_MAX_CHARS, CacheKey, build_key, client_bypass
from shipway.cache.policy import CachePolicy, resolve_policy
from shipway.config_costs import CacheOverrides, CacheSettings, ExactCacheMode

POLICY = resolve_policy(CacheSettings(semantic=True), None)
QUESTION = "What is the capital of France?"


def body(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": "chat",
        "messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": QUESTION},
        ],
        "temperature": 0,
        "max_tokens": 64,
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not ...}


def key(
    request: dict[str, Any],
    *,
    scope: str = "team:1",
    version: str = "v1",
    model: str = "chat",
    local: bool = False,
    policy: CachePolicy = POLICY,
) -> CacheKey:
    built = build_key(model, version, scope, request, local_model=local, policy=policy)
    assert built is not None
    return built


def with_mode(mode: ExactCacheMode) -> CachePolicy:
    return resolve_policy(CacheSettings(), CacheOverrides(exact=mode))


def test_fields_that_do_not_change_the_answer_do_not_change_the_key() -> None:
    plain = key(body())
    same = key(
        body(
            stream=True,
            stream_options={"include_usage": True},
            user="alice",
            metadata={"tags": "x"},
            store=True,
            timeout=30,
            service_tier="auto",
            prompt_cache_key="p",
            safety_identifier="s",
            model="auto",
        )
    )
    assert (same.exact, same.partition) == (plain.exact, plain.partition)


def test_equivalent_spellings_give_one_key() -> None:
    plain = key(body(stop=["END"], top_p=1.0))
    assert key(body(stop="END", top_p=1)).exact == plain.exact
    assert key(body(stop=["END"], top_p=1.0, n=1, logprobs=False, seed=None)).exact == plain.exact
    reordered = dict(reversed(list(body(stop=["END"], top_p=1.0).items())))
    assert key(reordered).exact == plain.exact
    with_null_name = body(stop=["END"], top_p=1.0)
    with_null_name["messages"][0]["name"] = None
    assert key(with_null_name).exact == plain.exact


@pytest.mark.parametrize(
    "changes",
    [
        {"max_tokens": 65},
        {"temperature": 0.0, "top_p": 0.5},
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
        {"response_format": {"type": "json_object"}},
        {"n": 2},
        {"logprobs": True},
        {"stop": ["x"]},
        {"seed": 7},
    ],
)
def test_a_parameter_that_changes_the_answer_changes_exact_key_and_partition(
    changes: dict[str, Any],
) -> None:
    plain, other = key(body()), key(body(**changes))
    assert other.exact != plain.exact
    assert other.partition != plain.partition  # never even a semantic match


def test_the_question_changes_the_exact_key_but_not_the_partition() -> None:
    plain = key(body())
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Hi"}]
    other = key(body(messages=messages))
    assert other.exact != plain.exact and other.partition == plain.partition


def test_earlier_messages_are_part_of_the_partition() -> None:
    plain = key(body())
    messages = [
        {"role": "system", "content": "Answer at length."},
        {"role": "user", "content": QUESTION},
    ]
    assert key(body(messages=messages)).partition != plain.partition


@pytest.mark.parametrize(
    "where", [{"scope": "team:2"}, {"scope": "key:7"}, {"version": "v2"}, {"model": "other"}]
)
def test_scope_model_and_version_separate_everything(where: dict[str, Any]) -> None:
    plain, other = key(body()), key(body(), **where)
    assert other.exact != plain.exact and other.partition != plain.partition


def test_deterministic_mode_caches_only_repeatable_requests() -> None:
    policy = with_mode("deterministic")

    def cached(request: dict[str, Any], *, local: bool = False) -> bool:
        return build_key("m", "v", "s", request, local_model=local, policy=policy) is not None

    assert cached(body(temperature=0))
    assert cached(body(temperature=0.0, n=3))
    assert not cached(body(temperature=...))  # OpenAI's default temperature is 1
    assert not cached(body(temperature=0.7))
    assert cached(body(temperature=0.7, seed=1), local=True)
    assert not cached(body(temperature=0.7, seed=1))  # an upstream's seed is best effort


def test_always_and_off_modes() -> None:
    sampled = body(temperature=0.9)
    assert build_key("m", "v", "s", sampled, local_model=False, policy=with_mode("always"))
    assert build_key("m", "v", "s", body(), local_model=False, policy=with_mode("off")) is None


def test_semantic_text_is_the_last_user_question() -> None:
    assert key(body()).text == QUESTION
    parts = [{"type": "text", "text": "What is"}, {"type": "text", "text": "the capital?"}]
    assert key(body(messages=[{"role": "user", "content": parts}])).text == "What is\nthe capital?"


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"}],
        [{"role": "tool", "tool_call_id": "c1", "content": "42"}],
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
        [{"role": "user", "content": "x" * (SEMANTIC_MAX_CHARS + 1)}],
        [{"role": "user", "content": "   "}],
    ],
)
def test_no_semantic_text_without_a_plain_user_question(messages: list[dict[str, Any]]) -> None:
    assert key(body(messages=messages)).text is None


def test_no_semantic_text_when_the_model_has_semantic_off() -> None:
    assert key(body(), policy=resolve_policy(CacheSettings(), None)).text is None


def test_model_overrides_replace_only_the_fields_they_set() -> None:
    base = CacheSettings(ttl_s=60, max_entries=5, semantic_threshold=0.8)
    policy = resolve_policy(base, CacheOverrides(exact="always", max_entries=9))
    assert (policy.exact, policy.ttl_s, policy.max_entries) == ("always", 60, 9)
    assert (policy.semantic, policy.semantic_threshold) == (False, 0.8)


@pytest.mark.parametrize(
    ("headers", "bypass"),
    [
        ({}, False),
        ({"X-Shipway-Cache": "bypass"}, True),
        ({"x-shipway-cache": " BYPASS "}, True),
        ({"x-shipway-cache": "hit"}, False),
        ({"Cache-Control": "no-cache"}, True),
        ({"cache-control": "max-age=0, No-Store"}, True),
        ({"cache-control": "max-age=60"}, False),
        ({"cache-control": "no-transform"}, False),
    ],
)
def test_client_bypass(headers: dict[str, str], bypass: bool) -> None:
    assert client_bypass(Headers(headers)) is bypass
