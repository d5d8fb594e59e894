"""``n`` answers from the embedded model, and the new local shapes against OpenAI's schema."""

from typing import Any

import httpx
import openai
import orjson
import pytest
from tests.e2e.conftest import CHAT
from tests.e2e.test_local_tool_calls import ASK, TOOLS
from tests.support.openai_spec import assert_conforms
from tests.support.servers import Server

MESSAGES = [{"role": "user", "content": "Name a colour."}]


def _post(server: Server, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(server.base + "/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def _events(server: Server, body: dict[str, Any]) -> list[dict[str, Any]]:
    with httpx.stream(
        "POST", server.base + "/v1/chat/completions", json=body, timeout=120
    ) as response:
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [orjson.loads(e) for e in events[:-1]]


def test_n_answers_are_independent_samples_with_summed_usage(client: openai.OpenAI) -> None:
    kwargs: dict[str, Any] = {
        "model": CHAT,
        "messages": MESSAGES,
        "n": 3,
        "max_tokens": 8,
        "temperature": 1.0,
        "seed": 11,
    }
    reply = client.chat.completions.create(**kwargs)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    single = client.chat.completions.create(**{**kwargs, "n": 1})
    assert reply.usage is not None and single.usage is not None
    # The prompt is counted once, as OpenAI does; completion tokens are every answer's.
    assert reply.usage.prompt_tokens == single.usage.prompt_tokens
    assert reply.usage.completion_tokens > single.usage.completion_tokens
    # Choice 0 is seeded like a single answer; the others differ from it.
    texts = [c.message.content for c in reply.choices]
    assert texts[0] == single.choices[0].message.content
    assert len(set(texts)) > 1
    again = client.chat.completions.create(**kwargs)
    assert [c.message.content for c in again.choices] == texts


def test_streamed_n_answers_match_the_plain_ones(client: openai.OpenAI) -> None:
    kwargs: dict[str, Any] = {
        "model": CHAT,
        "messages": MESSAGES,
        "n": 2,
        "max_tokens": 8,
        "temperature": 1.0,
        "seed": 12,
    }
    plain = [c.message.content for c in client.chat.completions.create(**kwargs).choices]
    texts = ["", ""]
    finishes: list[str | None] = [None, None]
    for chunk in client.chat.completions.create(**kwargs, stream=True):
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            finishes[choice.index] = choice.finish_reason or finishes[choice.index]
    assert texts == plain
    assert all(f in ("stop", "length") for f in finishes)


@pytest.mark.parametrize(
    "extra",
    [
        {"n": 2, "max_tokens": 4, "logprobs": True, "top_logprobs": 1},
        {"tools": TOOLS, "tool_choice": "required", "n": 2, "max_tokens": 60},
        {"tools": TOOLS, "tool_choice": "required", "max_tokens": 3},  # cut short
        {"response_format": {"type": "json_object"}, "max_tokens": 40},
    ],
    ids=["n", "tool-calls", "tool-call-cut-short", "json"],
)
def test_answers_conform_to_openai_schema(server: Server, extra: dict[str, Any]) -> None:
    body = {"model": CHAT, "messages": ASK, "seed": 13, **extra}
    assert_conforms(_post(server, body), "CreateChatCompletionResponse")


@pytest.mark.parametrize(
    "extra",
    [
        {"n": 2, "max_tokens": 4, "logprobs": True},
        {"tools": TOOLS, "tool_choice": "required", "n": 2, "max_tokens": 60},
        {"tools": TOOLS, "tool_choice": "auto", "max_tokens": 30},
    ],
    ids=["n", "tool-calls", "auto"],
)
def test_chunks_conform_to_openai_schema(server: Server, extra: dict[str, Any]) -> None:
    body = {
        "model": CHAT,
        "messages": ASK,
        "seed": 14,
        "stream": True,
        "stream_options": {"include_usage": True},
        **extra,
    }
    chunks = _events(server, body)
    for chunk in chunks:
        assert_conforms(chunk, "CreateChatCompletionStreamResponse")
    finished = {c["index"] for ch in chunks for c in ch["choices"] if c["finish_reason"]}
    assert finished == set(range(extra.get("n", 1)))
    assert chunks[-1]["usage"]["completion_tokens"] > 0
