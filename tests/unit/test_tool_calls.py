"""Local tool calls: definitions checked, prompt and history rendered, answers read back."""

import json
from typing import Any

import llama_cpp
import pytest

from shipway.backends.base import ChatRequest
from shipway.backends.local_answer import AnswerShaper, gather
from shipway.backends.local_chat import plan_local_chat
from shipway.backends.model_files import embedded_chat_model_path
from shipway.backends.tool_calls import plan_tools
from shipway.backends.tool_output import ToolCallReader
from shipway.errors import InvalidRequest, UnsupportedParameter

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "A city"}},
            "required": ["city"],
            "$defs": {"Unused": {"type": "integer"}},
        },
    },
}
NOW = {"type": "function", "function": {"name": "now"}}
ASK = [{"role": "user", "content": "Weather in Paris?"}]


@pytest.fixture(scope="module")
def vocab() -> Any:
    llm = llama_cpp.Llama(str(embedded_chat_model_path()), vocab_only=True, verbose=False)
    return llama_cpp.llama_model_get_vocab(llm.model)


def _compiles(vocab: Any, grammar: str) -> bool:
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
    if not sampler:
        return False
    llama_cpp.llama_sampler_free(sampler)
    return True


@pytest.mark.parametrize(
    ("choice", "text_schema"),
    [
        ("auto", None),
        ("auto", {"type": "object"}),
        ("required", None),
        ({"type": "function", "function": {"name": "now"}}, None),
    ],
)
def test_plans_make_grammars_llama_cpp_parses(
    vocab: Any, choice: Any, text_schema: dict[str, Any] | None
) -> None:
    plan = plan_tools({"tools": [WEATHER, NOW], "tool_choice": choice}, text_schema)
    assert plan is not None
    assert _compiles(vocab, plan.grammar), plan.grammar
    assert plan.tagged == (choice == "auto")
    if isinstance(choice, dict):  # only the function named is shown, and callable
        assert "get_weather" not in plan.system_text and "get_weather" not in plan.grammar
    else:  # functions as the client wrote them: descriptions help the model
        assert '"description":"A city"' in plan.system_text


def test_none_or_no_tools_means_no_plan() -> None:
    assert plan_tools({"tools": [WEATHER], "tool_choice": "none"}, None) is None
    assert plan_tools({"tool_choice": "auto"}, None) is None
    assert plan_tools({"tools": []}, None) is None


@pytest.mark.parametrize(
    ("body", "param", "error"),
    [
        ({"tools": "x"}, "tools", InvalidRequest),
        ({"tools": [5]}, "tools[0]", InvalidRequest),
        ({"tools": [{"type": "file_search"}]}, "tools[0].type", UnsupportedParameter),
        ({"tools": [{"type": "function", "function": []}]}, "tools[0].function", InvalidRequest),
        (
            {"tools": [{"type": "function", "function": {"name": "a.b"}}]},
            "tools[0].function.name",
            InvalidRequest,
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "description": 3}}]},
            "tools[0].function.description",
            InvalidRequest,
        ),
        (
            {
                "tools": [
                    {"type": "function", "function": {"name": "f", "parameters": {"type": "null"}}}
                ]
            },
            "tools[0].function.parameters",
            InvalidRequest,
        ),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "parameters": {"type": "object", "propertyNames": {}},
                        },
                    }
                ]
            },
            "tools[0].function.parameters.propertyNames",
            UnsupportedParameter,
        ),
        ({"tools": [NOW, NOW]}, "tools[1].function.name", InvalidRequest),
        ({"tools": [NOW], "tool_choice": "any"}, "tool_choice", InvalidRequest),
        (
            {"tools": [NOW], "tool_choice": {"type": "function"}},
            "tool_choice.function.name",
            InvalidRequest,
        ),
        (
            {"tools": [NOW], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "tool_choice.function.name",
            InvalidRequest,
        ),
        ({"tool_choice": "required"}, "tool_choice", InvalidRequest),
    ],
)  # fmt: skip
def test_bad_definitions_are_refused_by_path(
    body: dict[str, Any], param: str, error: type[Exception]
) -> None:
    with pytest.raises(error) as info:
        plan_tools(body, None)
    assert type(info.value) is error
    assert info.value.param == param


def test_history_with_calls_and_results_is_rendered_as_text() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "now", "arguments": "{}"},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "noon"}]},
    ]
    body = {"model": "m", "messages": messages, "tools": [WEATHER, NOW]}
    plan = plan_local_chat(ChatRequest(messages=messages, body=body))
    roles = [m["role"] for m in plan.messages]
    assert roles == ["system", "user", "assistant", "user"]
    assert plan.messages[0]["content"].startswith("Be brief.\n\nYou can call these functions:")
    assert plan.messages[2]["content"] == (
        '<tool_call>{"name":"get_weather","arguments":{"city":"Paris"}}</tool_call>\n'
        '<tool_call>{"name":"now","arguments":{}}</tool_call>'
    )
    assert plan.messages[3]["content"] == (
        '<tool_response>\n{"name":"get_weather","content":"Sunny"}\n</tool_response>\n'
        '<tool_response>\n{"name":"now","content":"noon"}\n</tool_response>'
    )
    assert plan.tools is not None and plan.grammar == plan.tools.grammar


def test_without_a_system_message_the_tools_are_one() -> None:
    body = {"model": "m", "messages": ASK, "tools": [NOW], "tool_choice": "required"}
    plan = plan_local_chat(ChatRequest(messages=ASK, body=body))
    assert [m["role"] for m in plan.messages] == ["system", "user"]
    assert "Answer with one call" in plan.messages[0]["content"]


def _read(text: str, *, tagged: bool, step: int) -> list[dict[str, Any]]:
    reader = ToolCallReader(tagged=tagged)
    deltas: list[dict[str, Any]] = []
    for i in range(0, len(text), step):
        deltas += reader.feed(text[i : i + step])
    return deltas + reader.finish()


def _arguments(deltas: list[dict[str, Any]]) -> str:
    return "".join(
        call["function"]["arguments"] for d in deltas for call in d.get("tool_calls") or ()
    )


CALLS = [
    ('{"name": "f", "arguments": {"a": {"b": [1, 2]}} } ', False, '{"a": {"b": [1, 2]}}'),
    ('{"name":"f","arguments":{"s":"} </tool_call>"}}', False, '{"s":"} </tool_call>"}'),
    ('{ "name" : "f" , "arguments" : { "x" : "y" } } ', False, '{ "x" : "y" }'),
    ('<tool_call>{"name": "f", "arguments": {"a": 1} } </tool_call>', True, '{"a": 1}'),
    ('<tool_call>{"name": "f", "arguments": {"a": "}</"}}</tool_call> ', True, '{"a": "}</"}'),
]


@pytest.mark.parametrize(("text", "tagged", "arguments"), CALLS)
@pytest.mark.parametrize("step", [1, 2, 3, 7, 1000])
def test_a_call_reads_the_same_however_it_is_split(
    text: str, tagged: bool, arguments: str, step: int
) -> None:
    deltas = _read(text, tagged=tagged, step=step)
    head = deltas[0]
    assert head["role"] == "assistant" and head["content"] is None
    (call,) = head["tool_calls"]
    assert call["id"].startswith("call_") and len(call["id"]) == 29
    assert call["function"] == {"name": "f", "arguments": ""}
    assert _arguments(deltas) == arguments
    assert all(set(d) == {"tool_calls"} for d in deltas[1:])


def test_text_in_auto_mode_is_content() -> None:
    deltas = _read("Hello <tool_call> there", tagged=True, step=2)
    assert deltas[0] == {"role": "assistant", "content": "He"}
    assert "".join(d["content"] for d in deltas) == "Hello <tool_call> there"


def test_a_call_cut_short_keeps_what_was_written() -> None:
    deltas = _read('{"name": "f", "arguments": {"a": "unfinis', tagged=False, step=4)
    assert _arguments(deltas) == '{"a": "unfinis'
    deltas = _read('<tool_call>{"name": "f", "argu', tagged=True, step=4)
    assert [d["content"] for d in deltas] == ['<tool_call>{"name": "f", "argu']


def test_n_answers_with_calls_gather_into_one_completion() -> None:
    body = {"model": "m", "messages": ASK, "tools": [WEATHER], "tool_choice": "required", "n": 2}
    plan = plan_local_chat(ChatRequest(messages=ASK, body=body))
    shaper = AnswerShaper(plan)
    chunks = shaper.opening()
    for index, text in enumerate(['{"name": "get_weather", "arguments": {"city": "Paris"}}', "{"]):
        for piece in text:
            chunks += shaper.delta({"index": index, "text": piece})
    done = {
        "prompt_tokens": 50,
        "completion_tokens": 21,
        "choices": [{"finish_reason": "stop"}, {"finish_reason": "length"}],
    }
    chunks += shaper.done(done)
    answer = gather(chunks, done, logprobs=False)
    first, second = answer["choices"]
    assert first["finish_reason"] == "tool_calls" and first["message"]["content"] is None
    (call,) = first["message"]["tool_calls"]
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert second["finish_reason"] == "length" and second["message"]["content"] == "{"
    assert answer["usage"] == {"prompt_tokens": 50, "completion_tokens": 21, "total_tokens": 71}
