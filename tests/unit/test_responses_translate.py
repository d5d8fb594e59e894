"""Responses requests → chat requests, and chat answers and streams → Responses (pure functions)."""

from typing import Any

import pytest
from tests.support.openai_spec import assert_conforms

from shipway.api.responses_body import ResponsesBody, echo_fields
from shipway.api.responses_events import EventStream
from shipway.api.responses_forward import Forwarding, _EventRestorer
from shipway.api.responses_output import ResponseHead, from_chat
from shipway.api.responses_translate import responses_param, translate
from shipway.api.schemas import parse_body
from shipway.backends.base import ChatRequest
from shipway.errors import InvalidRequest, ShipwayError, UnsupportedParameter
from shipway.security.guard_stage import ChatGuarding

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    "strict": True,
}


def _translate(**body: Any) -> tuple[ChatRequest, list[tuple[str, str | None]]]:
    translated = translate(parse_body(ResponsesBody, {"model": "m", **body}))
    return translated.chat, translated.sources


def _refused(**body: Any) -> ShipwayError:
    with pytest.raises(InvalidRequest) as caught:
        _translate(**body)
    return caught.value


def test_a_string_input_with_instructions() -> None:
    chat, sources = _translate(
        input="Hi", instructions="Be brief.", max_output_tokens=20, temperature=0.5, top_p=0.9
    )
    assert chat.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    assert (chat.max_tokens, chat.temperature, chat.top_p) == (20, 0.5, 0.9)
    assert chat.body == {
        "model": "m",
        "messages": chat.messages,
        "max_tokens": 20,
        "temperature": 0.5,
        "top_p": 0.9,
    }
    assert chat.body["messages"] is chat.messages  # one list: the PII guard redacts both
    assert sources == [("instructions", None), ("input", None)]


def test_items_with_a_function_call_history() -> None:
    chat, sources = _translate(
        input=[
            {"role": "developer", "content": "Use tools."},
            {"role": "user", "content": [{"type": "input_text", "text": "Weather in Oslo?"}]},
            {
                "type": "message",
                "role": "assistant",
                "id": "msg_1",
                "status": "completed",
                "content": [{"type": "output_text", "text": "Checking.", "annotations": []}],
            },
            {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "get_time", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "rain"},
            {"type": "function_call_output", "call_id": "c2", "output": "noon"},
        ],
    )
    assert chat.messages == [
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": "{}"},
                },
                {
                    "id": "c2",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": "{}"},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "rain"},
        {"role": "tool", "tool_call_id": "c2", "content": "noon"},
    ]
    assert [s[0] for s in sources] == ["input[0]", "input[1]", "input[2]", "input[5]", "input[6]"]


def test_parts_images_and_a_function_call_with_no_text_before_it() -> None:
    chat, _ = _translate(
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What is "},
                    {"type": "input_image", "image_url": "https://x/cat.png"},
                ],
            },
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        ]
    )
    assert chat.messages[0]["content"] == [
        {"type": "text", "text": "What is "},
        {"type": "image_url", "image_url": {"url": "https://x/cat.png", "detail": "auto"}},
    ]
    assert chat.messages[1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        ],
    }


def test_tools_formats_and_logprobs() -> None:
    chat, _ = _translate(
        input="x",
        tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"},
        parallel_tool_calls=False,
        text={"format": {"type": "json_schema", "name": "out", "schema": {"type": "object"}}},
        include=["message.output_text.logprobs"],
        top_logprobs=2,
        reasoning={"effort": "low"},
    )
    assert chat.body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather in a city",
                "parameters": WEATHER["parameters"],
                "strict": True,
            },
        }
    ]
    assert chat.body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert chat.body["parallel_tool_calls"] is False
    assert chat.body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "out", "schema": {"type": "object"}},
    }
    assert chat.body["reasoning_effort"] == "low"
    assert (chat.logprobs, chat.top_logprobs) == (True, 2)
    assert chat.body["logprobs"] is True and chat.body["top_logprobs"] == 2
    json_object, _ = _translate(input="x", text={"format": {"type": "json_object"}})
    assert json_object.body["response_format"] == {"type": "json_object"}
    plain, _ = _translate(input="x", text={"format": {"type": "text"}})
    assert "response_format" not in plain.body


def test_allowed_tools_filters_the_tools() -> None:
    other = {**WEATHER, "name": "other"}
    chat, _ = _translate(
        input="x",
        tools=[WEATHER, other],
        tool_choice={
            "type": "allowed_tools",
            "mode": "required",
            "tools": [{"type": "function", "name": "other"}],
        },
    )
    assert [t["function"]["name"] for t in chat.body["tools"]] == ["other"]
    assert chat.body["tool_choice"] == "required"


def test_unknown_fields_go_on_to_chat_as_the_chat_route_does() -> None:
    chat, _ = _translate(input="x", top_k=5)
    assert chat.body["top_k"] == 5


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"store": True}, "store"),
        ({"background": True}, "background"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"tools": [{"type": "function"}]}, "tools[0].name"),
        ({"tool_choice": {"type": "file_search"}, "tools": [WEATHER]}, "tool_choice"),
        ({"include": ["file_search_call.results"]}, "include[0]"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0]"),
        ({"input": [{"type": "reasoning", "id": "rs_1", "summary": []}]}, "input[0].type"),
        ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
        ({"input": [{"role": "user", "content": [{"type": "input_file"}]}]}, "input[0].content[0]"),
        (
            {"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]},
            "input[0].call_id",
        ),
        ({"input": []}, "input"),
        ({"text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format.name"),
        ({"text": {"format": {"type": "yaml"}}}, "text.format.type"),
    ],
)
def test_what_cannot_be_served_is_a_400_naming_the_parameter(
    body: dict[str, Any], param: str
) -> None:
    error = _refused(**{"input": "x", **body})
    assert error.param == param
    assert error.message


def test_stateful_refusals_say_what_to_do() -> None:
    error = _refused(input="x", previous_response_id="resp_1")
    assert isinstance(error, UnsupportedParameter)
    assert "input" in error.message and "store: false" in error.message


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m"}, "input"),
        ({"model": "m", "input": "x", "max_output_tokens": 8}, "max_output_tokens"),
        ({"model": "m", "input": "x", "temperature": 3}, "temperature"),
        ({"model": "m", "input": 5}, "input"),
    ],
)
def test_body_validation_names_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_body(ResponsesBody, body)
    assert caught.value.param == param


def test_chat_params_are_named_the_responses_way() -> None:
    sources: list[tuple[str, str | None]] = [
        ("instructions", None),
        ("input[0]", "content"),
        ("input[1]", "output"),
    ]
    assert responses_param("messages[0].content", sources) == "instructions"
    assert responses_param("messages[1].content[2]", sources) == "input[0].content[2]"
    assert responses_param("messages[2].content", sources) == "input[1].output"
    assert responses_param("messages[1]", sources) == "input[0]"
    assert responses_param("max_tokens", sources) == "max_output_tokens"
    assert responses_param("response_format", sources) == "text.format"
    assert responses_param("response_format.json_schema.schema", sources) == "text.format.schema"
    assert responses_param("tools[1].function.parameters", sources) == "tools[1].parameters"
    assert responses_param("top_logprobs", sources) == "top_logprobs"
    assert responses_param("tools", sources) == "tools"
    assert responses_param(None, sources) is None


# -- output ---------------------------------------------------------------------------------------
def _head(**body: Any) -> ResponseHead:
    parsed = parse_body(ResponsesBody, {"model": "m", "input": "x", **body})
    return ResponseHead("abc", "m", echo_fields(parsed, translate(parsed).chat), created_at=1)


def _chat_answer(message: dict[str, Any], finish: str = "stop") -> dict[str, Any]:
    return {
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
    }


def test_a_chat_answer_as_a_response() -> None:
    response = from_chat(_head(), _chat_answer({"role": "assistant", "content": "Hello"}))
    assert_conforms(response, "Response")
    assert response["id"] == "resp_abc" and response["status"] == "completed"
    assert response["output"] == [
        {
            "id": "msg_abc",
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [
                {"type": "output_text", "text": "Hello", "annotations": [], "logprobs": []}
            ],
        }
    ]
    assert response["usage"] == {
        "input_tokens": 7,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 3,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 10,
    }


def test_tool_calls_and_a_length_finish() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
    answer = _chat_answer({"role": "assistant", "content": None, "tool_calls": [call]}, "length")
    response = from_chat(_head(tools=[WEATHER]), answer)
    assert_conforms(response, "Response")
    assert response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert response["output"] == [
        {
            "id": "fc_abc_0",
            "type": "function_call",
            "status": "completed",
            "call_id": "call_1",
            "name": "f",
            "arguments": '{"a":1}',
        }
    ]


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def test_a_chat_stream_as_typed_events() -> None:
    stream = EventStream(_head())
    events = stream.start()
    events += stream.feed(_chunk({"role": "assistant", "content": ""}))
    events += stream.feed(_chunk({"content": "Hel"}))
    events += stream.feed(_chunk({"content": "lo"}))
    call = {"index": 0, "id": "call_1", "function": {"name": "f", "arguments": '{"a"'}}
    events += stream.feed(_chunk({"tool_calls": [call]}))
    events += stream.feed(_chunk({"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}))
    events += stream.feed(_chunk({}, "tool_calls"))
    events += stream.feed({"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 4}})
    events += stream.finish()
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    for event in events:
        assert_conforms(event, "ResponseStreamEvent")
    final = events[-1]["response"]
    assert final["output"][0]["content"][0]["text"] == "Hello"
    assert final["output"][1]["arguments"] == '{"a":1}'
    assert final["usage"]["total_tokens"] == 6
    assert events[6]["text"] == "Hello" and events[12]["arguments"] == '{"a":1}'


def test_a_stream_that_fails_midway() -> None:
    stream = EventStream(_head())
    events = [*stream.start(), *stream.feed(_chunk({"content": "Hi"}))]
    events += stream.fail(ShipwayError("the worker crashed"))
    assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
    for event in events:
        assert_conforms(event, "ResponseStreamEvent")
    assert events[-1]["response"]["error"] == {
        "code": "server_error",
        "message": "the worker crashed",
    }


def test_an_incomplete_empty_stream_still_has_a_message() -> None:
    stream = EventStream(_head())
    events = [*stream.start(), *stream.feed(_chunk({}, "length")), *stream.finish()]
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["output"][0]["type"] == "message"
    for event in events:
        assert_conforms(event, "ResponseStreamEvent")


# -- forwarding -----------------------------------------------------------------------------------
def test_forwarding_redacts_the_same_texts_and_fills_the_cap() -> None:
    raw = {
        "model": "up",
        "instructions": "Be kind.",
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "mail bob@x.org"}]},
            {
                "type": "function_call",
                "call_id": "c",
                "name": "f",
                "arguments": '{"to":"bob@x.org"}',
            },
            {"type": "web_search_call", "id": "ws_1"},  # not ours to judge: forwarded
        ],
    }
    forwarding = Forwarding(raw, "up")
    messages = forwarding.chat.messages
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    redacted = [
        messages[0],
        {**messages[1], "content": [{"type": "text", "text": "mail <EMAIL_ADDRESS_1>"}]},
        {
            **messages[2],
            "tool_calls": [
                {"type": "function", "function": {"arguments": '{"to":"<EMAIL_ADDRESS_1>"}'}}
            ],
        },
    ]
    request = ChatRequest(messages=redacted, max_tokens=64, body={"max_tokens": 64})
    body = forwarding.body(ChatGuarding(request, mapping={"<EMAIL_ADDRESS_1>": "bob@x.org"}))
    assert body["input"][0]["content"][0]["text"] == "mail <EMAIL_ADDRESS_1>"
    assert body["input"][1]["arguments"] == '{"to":"<EMAIL_ADDRESS_1>"}'
    assert body["input"][2] == raw["input"][2]  # type: ignore[index]
    assert body["instructions"] == "Be kind."
    assert body["max_output_tokens"] == 64
    assert raw["input"][0]["content"][0]["text"] == "mail bob@x.org"  # type: ignore[index]


def test_forwarded_events_get_their_placeholders_back() -> None:
    restorer = _EventRestorer({"<EMAIL_ADDRESS_1>": "bob@x.org"})
    where = {"item_id": "msg_1", "output_index": 0, "content_index": 0}
    out = []
    for delta in ("write to <EMAIL_", "ADDRESS_1> now", " and <EMA"):
        out += restorer.feed({"type": "response.output_text.delta", **where, "delta": delta})
    done = {
        "type": "response.output_text.done",
        **where,
        "text": "write to <EMAIL_ADDRESS_1> now and <EMA",
    }
    out += restorer.feed(done)
    deltas = [e["delta"] for e in out if e["type"] == "response.output_text.delta"]
    assert "".join(deltas) == "write to bob@x.org now and <EMA"
    assert out[-1]["text"] == "write to bob@x.org now and <EMA"
    assert [e["sequence_number"] for e in out] == list(range(len(out)))
