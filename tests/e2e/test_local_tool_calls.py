"""Tool calls from the embedded SmolLM2-135M: grammar-constrained, OpenAI-shaped, streamable."""

import json
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from tests.e2e.conftest import CHAT
from tests.support.servers import Server, shipway_server

WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "description": "City name, e.g. Paris"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer"},
    },
    "required": ["city", "unit", "days"],
    "additionalProperties": False,
}
TIME_PARAMETERS = {
    "type": "object",
    "properties": {"timezone": {"type": "string"}},
    "required": ["timezone"],
    "additionalProperties": False,
}
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather forecast for a city.",
            "parameters": WEATHER_PARAMETERS,
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "The current time in a timezone.",
            "parameters": TIME_PARAMETERS,
        },
    },
]
SCHEMAS = {"get_weather": WEATHER_PARAMETERS, "get_time": TIME_PARAMETERS}
ASK: list[Any] = [{"role": "user", "content": "What will the weather be in Paris tomorrow?"}]


def _valid_call(call: Any) -> dict[str, Any]:
    assert call.type == "function"
    assert call.id.startswith("call_")
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, SCHEMAS[call.function.name])
    return arguments


def test_required_gives_valid_calls_every_time(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=CHAT, messages=ASK, tools=TOOLS, tool_choice="required", n=10, seed=1
    )
    assert len(reply.choices) == 10
    for choice in reply.choices:
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content is None
        assert choice.message.tool_calls is not None and len(choice.message.tool_calls) == 1
        _valid_call(choice.message.tool_calls[0])
    assert reply.usage is not None
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_a_named_function_is_the_one_called(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=CHAT,
        messages=ASK,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        seed=2,
    )
    (call,) = reply.choices[0].message.tool_calls or []
    assert call.function.name == "get_time"
    _valid_call(call)


def test_auto_answers_in_text_or_with_a_valid_call(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=CHAT, messages=ASK, tools=TOOLS, tool_choice="auto", n=3, seed=3, max_tokens=40
    )
    for choice in reply.choices:
        if choice.message.tool_calls:
            assert choice.finish_reason == "tool_calls" and choice.message.content is None
            _valid_call(choice.message.tool_calls[0])
        else:
            assert choice.finish_reason in ("stop", "length")
            assert isinstance(choice.message.content, str)


def test_none_answers_in_text(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=CHAT, messages=ASK, tools=TOOLS, tool_choice="none", max_tokens=20, seed=4
    )
    assert reply.choices[0].message.tool_calls is None
    assert reply.choices[0].message.content


def test_a_two_turn_conversation_with_a_tool_message_completes(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(
        model=CHAT, messages=ASK, tools=TOOLS, tool_choice="required", seed=5
    )
    message = first.choices[0].message
    (call,) = message.tool_calls or []
    history: list[Any] = [
        *ASK,
        message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 24 degrees."},
    ]
    second = client.chat.completions.create(
        model=CHAT, messages=history, tools=TOOLS, max_tokens=40, seed=5
    )
    answer = second.choices[0]
    assert answer.finish_reason in ("stop", "length", "tool_calls")
    assert answer.message.content or answer.message.tool_calls
    # The tool's answer reached the prompt as text: it grew by more than the history's text.
    assert second.usage is not None and first.usage is not None
    assert second.usage.prompt_tokens > first.usage.prompt_tokens + 10


def test_streamed_call_deltas_reassemble_to_the_same_call(client: openai.OpenAI) -> None:
    kwargs: dict[str, Any] = {
        "model": CHAT,
        "messages": ASK,
        "tools": TOOLS,
        "tool_choice": "required",
        "seed": 6,
    }
    plain = client.chat.completions.create(**kwargs).choices[0]
    with client.chat.completions.stream(**kwargs) as stream:
        argument_deltas = [e for e in stream if e.type == "tool_calls.function.arguments.delta"]
        final = stream.get_final_completion().choices[0]
    assert len(argument_deltas) > 1  # streamed in pieces
    assert final.finish_reason == plain.finish_reason == "tool_calls"
    (streamed,) = final.message.tool_calls or []
    (answered,) = plain.message.tool_calls or []
    assert streamed.function.name == answered.function.name
    assert streamed.function.arguments == answered.function.arguments
    _valid_call(streamed)


def test_raw_tool_call_chunks_are_openai_shaped(server: Server) -> None:
    body = {
        "model": CHAT,
        "messages": ASK,
        "tools": TOOLS,
        "tool_choice": "required",
        "stream": True,
        "seed": 6,
    }
    with httpx.stream(
        "POST", server.base + "/v1/chat/completions", json=body, timeout=120
    ) as response:
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    deltas = [json.loads(e)["choices"][0] for e in events[:-1]]
    head = deltas[0]["delta"]["tool_calls"][0]
    assert deltas[0]["delta"]["role"] == "assistant"
    assert head["index"] == 0 and head["id"].startswith("call_") and head["type"] == "function"
    assert head["function"]["arguments"] == ""
    fragments = [d["delta"]["tool_calls"][0] for d in deltas[1:-1]]
    assert all(set(f) == {"index", "function"} for f in fragments)
    arguments = "".join(f["function"]["arguments"] for f in fragments)
    jsonschema.validate(json.loads(arguments), SCHEMAS[head["function"]["name"]])
    assert deltas[-1]["finish_reason"] == "tool_calls" and deltas[-1]["delta"] == {}


def test_langchain_drives_a_tool_call_end_to_end(server: Server) -> None:
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    calls: list[str] = []

    @tool
    def get_weather(city: str) -> str:
        """The weather forecast for a city."""
        calls.append(city)
        return f"Sunny and 24 degrees in {city}."

    llm = ChatOpenAI(
        base_url=server.base + "/v1", api_key="unused", model=CHAT, max_retries=0, seed=7
    )
    messages: list[Any] = [HumanMessage("What is the weather in Paris?")]
    asked = llm.bind_tools([get_weather], tool_choice="any").invoke(messages)
    assert asked.tool_calls and asked.tool_calls[0]["name"] == "get_weather"
    messages.append(asked)
    for call in asked.tool_calls:
        messages.append(ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"]))
    answer = llm.bind_tools([get_weather], tool_choice="none").invoke(messages)
    assert calls and isinstance(answer.content, str) and answer.content
    assert not answer.tool_calls


BAD_TOOLS: list[tuple[dict[str, Any], str]] = [
    ({"tools": [{"type": "code_interpreter"}]}, "tools[0].type"),
    ({"tools": {"type": "function"}}, "tools"),
    (
        {"tools": [{"type": "function", "function": {"name": "has space"}}]},
        "tools[0].function.name",
    ),
    ({"tools": [{"type": "function"}]}, "tools[0].function"),
    (
        {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
        "tool_choice.function.name",
    ),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    (
        {
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "f",
                        "parameters": {
                            "type": "object",
                            "properties": {"n": {"type": "integer", "maximum": 3}},
                        },
                    },
                }
            ]
        },
        "tools[0].function.parameters.properties.n.maximum",
    ),
    (
        {
            "tools": [
                {"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}
            ]
        },
        "tools[0].function.parameters",
    ),
    ({"tools": [TOOLS[0], TOOLS[0]]}, "tools[1].function.name"),
]


@pytest.mark.parametrize(("extra", "param"), BAD_TOOLS)
def test_bad_tools_are_a_400_naming_the_parameter(
    server: Server, extra: dict[str, Any], param: str
) -> None:
    body = {"model": CHAT, "messages": ASK, "max_tokens": 2, **extra}
    response = httpx.post(server.base + "/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_upstream_models_receive_these_fields_untouched(upstream: Server) -> None:
    """What a local model would refuse or rewrite reaches an upstream exactly as sent."""
    config = {
        "embedded_models": False,
        "models": {
            "up": {"backend": "openai", "base_url": upstream.base + "/v1", "upstream_model": "echo"}
        },
    }
    fields: dict[str, Any] = {
        "tools": [*TOOLS, {"type": "custom", "custom": {"name": "grep"}}],
        "tool_choice": {"type": "function", "function": {"name": "get_time"}},
        "parallel_tool_calls": False,
        "n": 2,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "x", "schema": {"type": "integer", "minimum": 3}},
        },
        "messages": [
            *ASK,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_time", "arguments": '{"timezone": "CET"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "noon"},
        ],
    }
    gateway = shipway_server(config)
    try:
        body = {"model": "up", "max_tokens": 5, **fields}
        response = httpx.post(gateway.base + "/v1/chat/completions", json=body, timeout=30)
        assert response.status_code == 200, response.text
    finally:
        gateway.stop()
    seen = httpx.get(upstream.base + "/_last").json()["body"]
    assert {key: seen[key] for key in fields} == fields
