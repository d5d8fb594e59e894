"""`POST /v1/responses` through the official client: the embedded SmolLM2 model (served through
chat), and upstreams on the fake upstream, through chat and forwarded as sent."""

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest
from pydantic import BaseModel, Field
from tests.e2e.conftest import CHAT
from tests.support.openai_spec import assert_conforms
from tests.support.servers import SINGLE_ATTEMPT, Server, shipway_server

QUESTION = "Name three colours."
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}


def _post(server: Server, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(server.base + "/v1/responses", json=body, timeout=120)


def _events(server: Server, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The stream's events; each `event:` line names its data's type, as OpenAI's do."""
    events = []
    with httpx.stream(
        "POST", server.base + "/v1/responses", json={**body, "stream": True}, timeout=120
    ) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                event = orjson.loads(line[6:])
                assert event["type"] == kind
                events.append(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


# -- the embedded model -------------------------------------------------------------------------
def test_plain_text_has_the_response_shape(client: openai.OpenAI, server: Server) -> None:
    reply = client.responses.create(model=CHAT, input=QUESTION, max_output_tokens=24, temperature=0)
    assert reply.object == "response" and reply.model == CHAT
    assert reply.id.startswith("resp_")
    assert reply.status in ("completed", "incomplete")
    assert reply.output_text
    assert reply.usage is not None
    assert reply.usage.total_tokens == reply.usage.input_tokens + reply.usage.output_tokens
    raw = _post(server, {"model": CHAT, "input": QUESTION, "max_output_tokens": 16})
    assert raw.status_code == 200
    assert_conforms(raw.json(), "Response")


def test_instructions_and_items_are_the_chat_messages(client: openai.OpenAI) -> None:
    """Same prompt tokens and same greedy answer as the chat request they translate to."""
    reply = client.responses.create(
        model=CHAT,
        instructions="Answer in one word.",
        input=[
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": [{"type": "output_text", "text": "Hi!"}]},
            {"role": "user", "content": [{"type": "input_text", "text": QUESTION}]},
        ],
        max_output_tokens=16,
        temperature=0,
    )
    chat = client.chat.completions.create(
        model=CHAT,
        messages=[
            {"role": "system", "content": "Answer in one word."},
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi!"},
            {"role": "user", "content": QUESTION},
        ],
        max_tokens=16,
        temperature=0,
    )
    assert reply.usage is not None and chat.usage is not None
    assert reply.usage.input_tokens == chat.usage.prompt_tokens
    assert reply.output_text == chat.choices[0].message.content


def test_max_output_tokens_reached_is_incomplete(client: openai.OpenAI) -> None:
    reply = client.responses.create(
        model=CHAT,
        input="Write a long story about a dragon who learns to bake bread.",
        max_output_tokens=16,
        temperature=0,
        extra_body={"ignore_eos": True},  # a Shipway extension: the answer runs to its cap
    )
    assert reply.status == "incomplete"
    assert reply.incomplete_details is not None
    assert reply.incomplete_details.reason == "max_output_tokens"
    assert reply.usage is not None and reply.usage.output_tokens == 16
    assert reply.output[0].status == "incomplete"


def test_stream_events_validate_and_assemble_the_plain_answer(
    client: openai.OpenAI, server: Server
) -> None:
    body = {"model": CHAT, "input": QUESTION, "max_output_tokens": 24, "temperature": 0}
    plain = client.responses.create(**body)  # type: ignore[call-overload]
    events = _events(server, body)
    for event in events:
        assert_conforms(event, "ResponseStreamEvent")
    kinds = [e["type"] for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        f"response.{plain.status}",
    ]
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text == plain.output_text
    assert events[-1]["response"]["usage"]["output_tokens"] == plain.usage.output_tokens  # type: ignore[union-attr]


def test_the_official_stream_helper(client: openai.OpenAI) -> None:
    # An answer that ends before its cap: the helper's final response needs `completed`.
    body = {"model": CHAT, "input": "What is 2+2?", "max_output_tokens": 64, "temperature": 0}
    with client.responses.stream(**body) as stream:  # type: ignore[call-overload]
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text
    assert final.output_text == client.responses.create(**body).output_text  # type: ignore[call-overload]
    events = list(client.responses.create(**body, stream=True))  # type: ignore[call-overload]
    assert events[-1].type in ("response.completed", "response.incomplete")


def test_logprobs_when_included(server: Server) -> None:
    body = {
        "model": CHAT,
        "input": QUESTION,
        "max_output_tokens": 16,
        "include": ["message.output_text.logprobs"],
        "top_logprobs": 2,
    }
    reply = _post(server, body).json()
    assert_conforms(reply, "Response")
    logprobs = reply["output"][0]["content"][0]["logprobs"]
    assert len(logprobs) == reply["usage"]["output_tokens"]
    assert all(len(entry["top_logprobs"]) == 2 for entry in logprobs)
    deltas = [e for e in _events(server, body) if e["type"] == "response.output_text.delta"]
    assert deltas and all(e["logprobs"] for e in deltas)
    for event in deltas:
        assert_conforms(event, "ResponseStreamEvent")


def test_function_tools_on_the_local_model(client: openai.OpenAI, server: Server) -> None:
    body = {
        "model": CHAT,
        "input": "What is the weather in Oslo?",
        "tools": [WEATHER],
        "tool_choice": "required",
        "temperature": 0,
        "max_output_tokens": 64,
    }
    reply = client.responses.create(**body)  # type: ignore[call-overload]
    calls = [item for item in reply.output if item.type == "function_call"]
    assert calls and calls[0].name == "get_weather"
    assert isinstance(orjson.loads(calls[0].arguments)["city"], str)
    assert_conforms(_post(server, body).json(), "Response")
    events = _events(server, body)
    for event in events:
        assert_conforms(event, "ResponseStreamEvent")
    deltas = [e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta"]
    final = events[-1]["response"]["output"]
    assert "".join(deltas) == next(i for i in final if i["type"] == "function_call")["arguments"]
    # The call and its output as history: the model answers from them.
    history = client.responses.create(
        model=CHAT,
        input=[
            {"role": "user", "content": "What is the weather in Oslo?"},
            {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "rain, 12 C"},
        ],
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="none",
        max_output_tokens=32,
    )
    assert history.output_text


def test_text_format_through_the_parse_helper(client: openai.OpenAI, server: Server) -> None:
    class Colour(BaseModel):
        # Bounded: an unbounded string lets a 135M model list colours until max tokens run
        # out, and a cut-off answer cannot parse (with OpenAI too: status "incomplete").
        name: str = Field(max_length=24)

    parsed = client.responses.parse(
        model=CHAT, input="Name a colour.", text_format=Colour, max_output_tokens=64
    )
    assert isinstance(parsed.output_parsed, Colour)
    body = {
        "model": CHAT,
        "input": "Name a colour.",
        "max_output_tokens": 64,
        # Greedy: a sampled json_object answer of a 135M model may run past 64 tokens.
        "temperature": 0,
        "text": {"format": {"type": "json_object"}},
    }
    reply = _post(server, body).json()
    assert_conforms(reply, "Response")
    assert isinstance(orjson.loads(reply["output"][0]["content"][0]["text"]), dict)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"previous_response_id": "resp_123"}, "previous_response_id"),
        ({"conversation": "conv_123"}, "conversation"),
        ({"store": True}, "store"),
        ({"background": True}, "background"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0]"),
        ({"input": [{"role": "user", "content": [{"type": "input_file"}]}]}, "input[0].content[0]"),
        ({"max_output_tokens": 8}, "max_output_tokens"),
        ({"input": ["x", {"role": "user", "content": "a\x1bb"}]}, "input[0]"),
        (
            {"input": [{"role": "user", "content": "ok"}, {"role": "user", "content": "a\x1bb"}]},
            "input[1].content",
        ),
        ({"instructions": "a\x00b"}, "instructions"),
        (
            {
                "input": [
                    {
                        "role": "user",
                        "content": [{"type": "input_image", "image_url": "https://x/y.png"}],
                    }
                ]
            },
            "input[0].content[0]",
        ),
        ({"unknown_field": 1}, "unknown_field"),
        ({"model": "nope"}, "model"),
    ],
)
def test_bad_requests_are_400s_naming_the_parameter(
    server: Server, body: dict[str, Any], param: str
) -> None:
    for stream in (False, True):
        response = _post(server, {"model": CHAT, "input": "hi", **body, "stream": stream})
        assert response.status_code in (400, 404), response.text
        assert response.headers["content-type"] == "application/json"
        assert_conforms(response.json(), "ErrorResponse")
        assert response.json()["error"]["param"] == param


def test_stored_responses_are_a_clear_400(server: Server) -> None:
    for method, path in [
        ("GET", "/v1/responses/resp_123"),
        ("DELETE", "/v1/responses/resp_123"),
        ("GET", "/v1/responses/resp_123/input_items"),
        ("POST", "/v1/responses/resp_123/cancel"),
    ]:
        response = httpx.request(method, server.base + path, timeout=30)
        assert response.status_code == 400
        assert "not stored" in response.json()["error"]["message"]


# -- upstreams ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gateway(upstream: Server) -> Iterator[Server]:
    base = upstream.base + "/v1"

    def up(name: str, **extra: object) -> dict[str, object]:
        return {"backend": "openai", "base_url": base, "upstream_model": name, **extra}

    srv = shipway_server(
        {
            "embedded_models": False,
            "resilience": SINGLE_ATTEMPT,  # each fault's own status, not the retries
            "models": {
                "up": up("echo"),
                "up-tools": up("tool-call"),
                "up-fwd": up("echo", responses_api=True),
                "up-fwd-pii": up("echo", responses_api=True, guards={"pii": "redact"}),
                "up-fwd-500": up("fail-500", responses_api=True),
                "up-fwd-400": up("fail-400", responses_api=True),
                "up-fwd-break": up("break-stream", responses_api=True),
                "up-fwd-error": up("error-stream", responses_api=True),
            },
        }
    )
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def up_client(gateway: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base + "/v1", api_key="x", max_retries=0, timeout=30)


def _last(upstream: Server) -> dict[str, Any]:
    seen: dict[str, Any] = httpx.get(upstream.base + "/_last").json()
    return seen["body"]


def test_upstream_through_chat(up_client: openai.OpenAI, gateway: Server, upstream: Server) -> None:
    reply = up_client.responses.create(
        model="up",
        instructions="Be brief.",
        input="hello there",
        max_output_tokens=32,
        text={"format": {"type": "json_schema", "name": "out", "schema": {"type": "object"}}},
    )
    assert reply.output_text == "echo: hello there" and reply.model == "up"
    sent = _last(upstream)
    assert sent["model"] == "echo" and "messages" in sent  # chat completions, not responses
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
    assert sent["max_tokens"] == 32
    assert sent["response_format"]["json_schema"]["name"] == "out"
    raw = _post(gateway, {"model": "up", "input": "hi"})
    assert_conforms(raw.json(), "Response")
    for event in _events(gateway, {"model": "up", "input": "hello there"}):
        assert_conforms(event, "ResponseStreamEvent")


def test_function_tools_through_chat(
    up_client: openai.OpenAI, gateway: Server, upstream: Server
) -> None:
    reply = up_client.responses.create(
        model="up-tools",
        input="Oslo",
        tools=[WEATHER],
        tool_choice="required",  # type: ignore[list-item]
    )
    call = reply.output[0]
    assert call.type == "function_call"
    assert (call.name, call.arguments, call.call_id) == (
        "get_weather",
        '{"text":"Oslo"}',
        "call_fake",
    )
    sent = _last(upstream)
    assert sent["tools"][0]["function"]["name"] == "get_weather"
    assert sent["tool_choice"] == "required"
    body = {"model": "up-tools", "input": "Oslo", "tools": [WEATHER]}
    assert_conforms(_post(gateway, body).json(), "Response")
    events = _events(gateway, body)
    for event in events:
        assert_conforms(event, "ResponseStreamEvent")
    deltas = [e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta"]
    assert "".join(deltas) == '{"text":"Oslo"}'
    with up_client.responses.stream(model="up-tools", input="Oslo", tools=[WEATHER]) as stream:  # type: ignore[list-item]
        final = stream.get_final_response()
    assert final.output[0].type == "function_call"
    # The call and its output go back as history, as chat messages.
    up_client.responses.create(
        model="up",
        input=[
            {"role": "user", "content": "Oslo"},
            {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "rain"},
        ],
        tools=[WEATHER],  # type: ignore[list-item]
    )
    assert _last(upstream)["messages"][1:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": "{}"},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "rain"},
    ]


def test_forwarded_as_sent(up_client: openai.OpenAI, gateway: Server, upstream: Server) -> None:
    reply = up_client.responses.create(
        model="up-fwd", input="hello there", previous_response_id="resp_upstream_keeps_it"
    )
    assert reply.output_text == "echo: hello there"
    assert reply.model == "up-fwd"  # the alias, not the upstream's name
    sent = _last(upstream)
    assert sent["model"] == "echo"
    assert sent["previous_response_id"] == "resp_upstream_keeps_it"  # the upstream's to judge
    assert "messages" not in sent
    events = _events(gateway, {"model": "up-fwd", "input": "hello there"})
    for event in events:
        assert_conforms(event, "ResponseStreamEvent")
        if "response" in event:
            assert event["response"]["model"] == "up-fwd"
    with up_client.responses.stream(model="up-fwd", input="hello there") as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        assert stream.get_final_response().output_text == text == "echo: hello there"


def test_forwarded_pii_is_redacted_upstream_and_restored(
    up_client: openai.OpenAI, gateway: Server, upstream: Server
) -> None:
    reply = up_client.responses.create(model="up-fwd-pii", input="mail bob@example.com")
    assert _last(upstream)["input"] == "mail <EMAIL_ADDRESS_1>"
    assert reply.output_text == "echo: mail bob@example.com"
    events = _events(gateway, {"model": "up-fwd-pii", "input": "mail bob@example.com"})
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert deltas == "echo: mail bob@example.com"
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == deltas
    for event in events:
        assert_conforms(event, "ResponseStreamEvent")


@pytest.mark.parametrize(("model", "status"), [("up-fwd-500", 502), ("up-fwd-400", 400)])
def test_forwarded_failures_keep_their_status(gateway: Server, model: str, status: int) -> None:
    for stream in (False, True):
        response = _post(gateway, {"model": model, "input": "hi", "stream": stream})
        assert response.status_code == status
        assert_conforms(response.json(), "ErrorResponse")


@pytest.mark.parametrize("model", ["up-fwd-break", "up-fwd-error"])
def test_a_forwarded_stream_failing_midway_ends_failed(gateway: Server, model: str) -> None:
    events = _events(gateway, {"model": model, "input": "one two three"})
    assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
    for event in events:
        assert_conforms(event, "ResponseStreamEvent")


# -- the OpenAI Agents SDK ----------------------------------------------------------------------
async def _run_agent(
    base: str, model: str, tools: list[Any], stream: bool, question: str = "What is 2+2?"
) -> Any:
    from agents import (
        Agent,
        ModelSettings,
        OpenAIResponsesModel,
        RunConfig,
        Runner,
        set_tracing_disabled,
    )

    set_tracing_disabled(True)  # its traces would go to OpenAI's servers
    client = openai.AsyncOpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
    agent = Agent(
        name="Assistant",
        instructions="Answer briefly.",
        model=OpenAIResponsesModel(model=model, openai_client=client),
        model_settings=ModelSettings(
            max_tokens=64, temperature=0, tool_choice="required" if tools else None
        ),
        tools=tools,
        tool_use_behavior="stop_on_first_tool",
    )
    config = RunConfig(tracing_disabled=True)
    try:
        if not stream:
            return (await Runner.run(agent, question, run_config=config)).final_output
        run = Runner.run_streamed(agent, question, run_config=config)
        async for _ in run.stream_events():
            pass
        return run.final_output
    finally:
        await client.close()


@pytest.mark.parametrize("stream", [False, True])
async def test_the_agents_sdk_runs_an_agent_on_the_local_model(
    server: Server, stream: bool
) -> None:
    assert "4" in await _run_agent(server.base, CHAT, [], stream)


@pytest.mark.parametrize("stream", [False, True])
async def test_the_agents_sdk_calls_a_function_tool(gateway: Server, stream: bool) -> None:
    from agents import function_tool

    @function_tool
    def shout(text: str) -> str:
        """Say the text loudly."""
        return text.upper() + "!"

    assert await _run_agent(gateway.base, "up-tools", [shout], stream) == "WHAT IS 2+2?!"


@pytest.mark.parametrize("stream", [False, True])
async def test_the_agents_sdk_calls_a_function_tool_on_the_local_model(
    server: Server, stream: bool
) -> None:
    from agents import function_tool

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return f"rain in {city}"

    answer = await _run_agent(server.base, CHAT, [get_weather], stream, "Weather in Oslo?")
    assert answer.startswith("rain in ")


@pytest.mark.parametrize("model", ["up", "up-fwd"])
def test_usage_cost_when_asked(gateway: Server, model: str) -> None:
    headers = {"x-shipway-include-cost": "true"}
    body = {"model": model, "input": "hello there"}
    plain = httpx.post(gateway.base + "/v1/responses", json=body, headers=headers, timeout=30)
    assert set(plain.json()["usage"]["cost"]) == {"currency", "input", "output", "total"}
    with httpx.stream(
        "POST",
        gateway.base + "/v1/responses",
        json={**body, "stream": True},
        headers=headers,
        timeout=30,
    ) as response:
        last = [line for line in response.iter_lines() if line.startswith("data: ")][-1]
    assert "cost" in orjson.loads(last[6:])["response"]["usage"]
