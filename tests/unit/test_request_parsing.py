import pytest

from shipway.api.schemas import ChatCompletionBody, EmbeddingBody, parse_body
from shipway.backends.base import ChatRequest
from shipway.backends.local_chat import validate_local_chat
from shipway.errors import InvalidRequest, UnsupportedParameter

OK = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({**OK, "stop": 5}, "stop"),
        ({**OK, "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        (
            {**OK, "messages": [{"role": "user", "content": [{"text": "no type"}]}]},
            "messages[0].content",
        ),
        ({**OK, "stream_options": {"include_usage": "maybe"}}, "stream_options.include_usage"),
        ({**OK, "n": 0}, "n"),
    ],
)
def test_param_paths_are_what_the_client_wrote(body: dict, param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_body(ChatCompletionBody, body)
    assert info.value.param == param


def test_unknown_fields_are_kept_for_upstreams() -> None:
    body = parse_body(ChatCompletionBody, {**OK, "top_k": 5})
    assert body.model_extra == {"top_k": 5}


def test_embedding_input_variants() -> None:
    assert parse_body(EmbeddingBody, {"model": "m", "input": "x"}).input == "x"
    assert parse_body(EmbeddingBody, {"model": "m", "input": [[1, 2]]}).input == [[1, 2]]


def _local(body: dict) -> list[dict[str, str]]:
    return validate_local_chat(ChatRequest(messages=body["messages"], body=body))


def test_local_chat_flattens_text_parts_and_maps_developer_to_system() -> None:
    messages = [
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": None},
    ]
    assert _local({**OK, "messages": messages}) == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "ab"},
        {"role": "assistant", "content": ""},
    ]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"logit_bias": {"1": 5}}, "logit_bias"),
        ({"messages": [{"role": "function", "content": "x", "name": "f"}]}, "messages[0]"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"top_k": 3}, "top_k"),
        ({"modalities": ["text", "audio"]}, "modalities"),
    ],
)
def test_local_chat_refuses_what_it_cannot_do(extra: dict, param: str) -> None:
    with pytest.raises(UnsupportedParameter) as info:
        _local({**OK, **extra})
    assert info.value.param == param


def test_tool_adjacent_fields_without_tools_are_accepted() -> None:
    assert _local({**OK, "tool_choice": "none", "tools": [], "parallel_tool_calls": False})
