"""Streams assembled into completions and completions replayed as streams, OpenAI's shapes."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from tests.support.openai_spec import assert_conforms

from shipway.cache.stream_replay import StreamAssembler, replay_chunks

STAMP = {"id": "chatcmpl-1", "created": 1_700_000_000, "model": "chat"}
USAGE = {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}


def completion(*choices: dict[str, Any]) -> dict[str, Any]:
    return {**STAMP, "object": "chat.completion", "choices": list(choices), "usage": USAGE}


def choice(
    index: int, message: dict[str, Any], finish: str = "stop", logprobs: Any = None
) -> dict[str, Any]:
    full = {"role": "assistant", "content": None, "refusal": None, **message}
    return {"index": index, "message": full, "logprobs": logprobs, "finish_reason": finish}


def token(text: str) -> dict[str, Any]:
    return {"token": text, "logprob": -0.5, "bytes": list(text.encode()), "top_logprobs": []}


TOOL_CALLS = [
    {
        "id": "call_a",
        "type": "function",
        "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
    },
    {"id": "call_b", "type": "function", "function": {"name": "time", "arguments": ""}},
]

CASES = {
    "text": completion(choice(0, {"content": "Paris is the capital."})),
    "empty text": completion(choice(0, {"content": ""}, finish="length")),
    "tool calls": completion(choice(0, {"tool_calls": TOOL_CALLS}, finish="tool_calls")),
    "text and a tool call": completion(
        choice(0, {"content": "Let me look.", "tool_calls": TOOL_CALLS[:1]}, finish="tool_calls")
    ),
    "refusal": completion(choice(0, {"refusal": "I can't help with that."})),
    "n=2": completion(
        choice(0, {"content": "Paris."}), choice(1, {"content": "It is Paris."}, finish="length")
    ),
    "logprobs": completion(
        choice(
            0,
            {"content": "Hi there"},
            logprobs={"content": [token("Hi"), token(" there")], "refusal": None},
        )
    ),
}


def assemble(chunks: list[dict[str, Any]], n: int = 1, **kwargs: Any) -> dict[str, Any] | None:
    assembler = StreamAssembler(choices=n)
    for chunk in chunks:
        assembler.feed(copy.deepcopy(chunk))
    return assembler.completion(**kwargs)


@pytest.mark.parametrize("name", list(CASES))
def test_a_replay_assembles_back_into_the_completion(name: str) -> None:
    original = CASES[name]
    assert_conforms(original, "CreateChatCompletionResponse")
    chunks = replay_chunks(original, include_usage=True)
    assert assemble(chunks, n=len(original["choices"])) == original


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("include_usage", [True, False])
def test_replayed_chunks_follow_openais_schema_and_order(name: str, include_usage: bool) -> None:
    chunks = replay_chunks(CASES[name], include_usage=include_usage)
    for chunk in chunks:
        assert_conforms(chunk, "CreateChatCompletionStreamResponse")
        assert {k: chunk[k] for k in STAMP} == STAMP
    body = [c for c in chunks if c["choices"]]
    for index in range(len(CASES[name]["choices"])):
        mine = [c["choices"][0] for c in body if c["choices"][0]["index"] == index]
        assert mine[0]["delta"]["role"] == "assistant"
        assert [c["finish_reason"] is not None for c in mine] == [False] * (len(mine) - 1) + [True]
    if include_usage:
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == USAGE
        assert all("usage" not in c for c in chunks[:-1])
    else:
        assert len(body) == len(chunks) and all("usage" not in c for c in chunks)


def test_the_text_comes_right_after_the_role_chunk() -> None:
    chunks = replay_chunks(CASES["text"], include_usage=False)
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas == [
        {"role": "assistant", "content": ""},
        {"content": "Paris is the capital."},
        {},
    ]


def live(index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    chunk = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
    return {**STAMP, "object": "chat.completion.chunk", "choices": [chunk]}


def test_a_live_stream_with_split_tool_arguments_and_interleaved_choices() -> None:
    call = {
        "index": 0,
        "id": "call_a",
        "type": "function",
        "function": {"name": "weather", "arguments": ""},
    }
    chunks = [
        live(0, {"role": "assistant", "content": None, "tool_calls": [call]}),
        live(1, {"role": "assistant", "content": ""}),
        live(0, {"tool_calls": [{"index": 0, "function": {"arguments": '{"ci'}}]}),
        live(1, {"content": "Par"}),
        live(0, {"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "Paris"}'}}]}),
        live(1, {"content": "is."}),
        live(1, {}, "stop"),
        live(0, {}, "tool_calls"),
        {**STAMP, "object": "chat.completion.chunk", "choices": [], "usage": USAGE},
    ]
    expected = completion(
        choice(0, {"tool_calls": TOOL_CALLS[:1]}, finish="tool_calls"),
        choice(1, {"content": "Paris."}),
    )
    assert assemble(chunks, n=2) == expected


def test_an_unfinished_stream_is_no_completion() -> None:
    chunks = replay_chunks(CASES["n=2"], include_usage=True)
    finish_of_choice_1 = max(
        i for i, c in enumerate(chunks) if c["choices"] and c["choices"][0]["index"] == 1
    )
    assert assemble(chunks[:finish_of_choice_1], n=2) is None  # choice 1 never finished
    assert assemble(chunks, n=3) is None  # the request asked for three answers
    assert assemble([]) is None


def test_the_usage_may_come_from_the_caller_when_the_stream_had_none() -> None:
    chunks = replay_chunks(CASES["text"], include_usage=False)
    assert assemble(chunks) is None
    assert assemble(chunks, usage=USAGE) == CASES["text"]


def test_a_tool_call_without_its_name_is_incomplete() -> None:
    chunks = [
        live(
            0, {"role": "assistant", "tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}
        ),
        live(0, {}, "tool_calls"),
    ]
    assert assemble(chunks, usage=USAGE) is None
