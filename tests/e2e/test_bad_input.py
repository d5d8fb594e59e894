"""Every bad input gets a clear error in the OpenAI envelope with the right status, never a 500,
and the server keeps serving afterwards."""

import time
from typing import Any

import httpx
import openai
import pytest
from tests.e2e.conftest import CHAT, EMBED
from tests.support.servers import Server

OK_MESSAGES = [{"role": "user", "content": "hi"}]


def _post(server: Server, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.post(server.base + path, timeout=60, **kwargs)


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and len(error["message"]) > 10
    assert response.headers["x-request-id"]
    return error


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"{not json", "parse the JSON"),
        (b"", "empty"),
        (b"[1, 2]", "JSON object"),
        (b'{"model": "x", "messages": "\xff\xfe"}', "UTF-8"),
    ],
)
def test_unparseable_bodies(server: Server, content: bytes, needle: str) -> None:
    response = _post(
        server,
        "/v1/chat/completions",
        content=content,
        headers={"content-type": "application/json"},
    )
    error = _error(response, 400)
    assert needle in error["message"]
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": CHAT}, "messages"),
        ({"model": CHAT, "messages": []}, "messages"),
        ({"messages": OK_MESSAGES}, "model"),
        ({"model": CHAT, "messages": [{"content": "no role"}]}, "messages[0].role"),
        ({"model": CHAT, "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"model": CHAT, "messages": OK_MESSAGES, "max_tokens": "ten"}, "max_tokens"),
        ({"model": CHAT, "messages": OK_MESSAGES, "temperature": 9}, "temperature"),
        ({"model": CHAT, "messages": OK_MESSAGES, "top_p": -1}, "top_p"),
        ({"model": CHAT, "messages": OK_MESSAGES, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"model": CHAT, "messages": OK_MESSAGES, "top_logprobs": 3}, "top_logprobs"),
        ({"model": 5, "messages": OK_MESSAGES}, "model"),
        ({"model": CHAT, "messages": OK_MESSAGES, "n": "2"}, "n"),
        ({"model": CHAT, "messages": OK_MESSAGES, "logprobs": 1}, "logprobs"),
        ({"model": CHAT, "messages": OK_MESSAGES, "modalities": 5}, "modalities"),
        (
            {
                "model": CHAT,
                "messages": [{"role": "user", "content": [{"type": "text", "text": 123}]}],
            },
            "messages[0].content",
        ),
        (
            {"model": CHAT, "messages": [{"role": "user", "content": [{"type": "text"}]}]},
            "messages[0].content",
        ),
    ],
)
def test_wrong_types_and_missing_fields_name_the_param(
    server: Server, body: dict[str, Any], param: str
) -> None:
    error = _error(_post(server, "/v1/chat/completions", json=body), 400)
    assert error["param"] == param


def test_unknown_model_is_404_model_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-17", messages=OK_MESSAGES)  # type: ignore[arg-type]
    error = info.value.body
    assert isinstance(error, dict) and error["code"] == "model_not_found"
    assert CHAT in error["message"]  # says which models exist
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-17")


def test_wrong_capability_is_400(server: Server) -> None:
    error = _error(_post(server, "/v1/embeddings", json={"model": CHAT, "input": "x"}), 400)
    assert error["code"] == "model_not_supported"
    error = _error(
        _post(server, "/v1/chat/completions", json={"model": EMBED, "messages": OK_MESSAGES}), 400
    )
    assert error["param"] == "model"


def test_oversized_body_is_413(server: Server) -> None:
    huge = b'{"model": "x", "messages": [{"role": "user", "content": "' + b"a" * 5_000_000 + b'"}]}'
    _error(_post(server, "/v1/chat/completions", content=huge), 413)

    def chunked() -> Any:
        for _ in range(6):
            yield b"a" * 1_000_000

    response = _post(server, "/v1/chat/completions", content=chunked())
    _error(response, 413)


def test_prompt_longer_than_context_is_context_length_exceeded(client: openai.OpenAI) -> None:
    long_text = "word " * 3000
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=CHAT, messages=[{"role": "user", "content": long_text}]
        )
    assert info.value.code == "context_length_exceeded"
    assert "2048" in info.value.message
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=CHAT, messages=OK_MESSAGES, max_tokens=5000)
    assert info.value.code == "context_length_exceeded"


def test_context_length_exceeded_when_streaming_is_a_400_not_a_broken_stream(
    server: Server,
) -> None:
    body = {
        "model": CHAT,
        "stream": True,
        "messages": [{"role": "user", "content": "word " * 3000}],
    }
    error = _error(_post(server, "/v1/chat/completions", json=body), 400)
    assert error["code"] == "context_length_exceeded"


@pytest.mark.parametrize(
    ("extra", "param", "needle"),
    [
        ({"stop": [str(i) for i in range(100)]}, "stop", "at most 4"),
        ({"stream_options": {"include_usage": True}}, "stream_options", "'stream' is enabled"),
        ({"stream": False, "stream_options": {}}, "stream_options", "'stream' is enabled"),
        ({"response_format": "json"}, "response_format", "response_format"),
        ({"response_format": {"type": "yaml"}}, "response_format.type", "response_format"),
    ],
)
def test_fields_openai_rejects_are_rejected(
    server: Server, extra: dict[str, Any], param: str, needle: str
) -> None:
    body = {"model": CHAT, "messages": OK_MESSAGES, "max_tokens": 1, **extra}
    error = _error(_post(server, "/v1/chat/completions", json=body), 400)
    assert error["param"] == param
    assert needle in error["message"]


def test_too_many_messages_is_a_fast_400(server: Server) -> None:
    body = {"model": CHAT, "messages": [{"role": "user", "content": ""}] * 130_000}
    started = time.monotonic()
    error = _error(_post(server, "/v1/chat/completions", json=body), 400)
    assert time.monotonic() - started < 3
    assert error["param"] == "messages" and "2048" in error["message"]


def test_requests_refused_before_routing_are_counted(server: Server) -> None:
    def count(status: str) -> float:
        text = httpx.get(server.base + "/metrics").text
        key = f'shipway_http_responses_total{{path="/v1/chat/completions",status="{status}"}} '
        found = [line for line in text.splitlines() if line.startswith(key)]
        return float(found[0].split()[-1]) if found else 0.0

    before_400, before_413 = count("400"), count("413")
    _post(server, "/v1/chat/completions", content=b"{not json")
    _post(server, "/v1/chat/completions", json={"model": CHAT})
    _post(server, "/v1/chat/completions", content=b"x" * 5_000_000)
    assert count("400") == before_400 + 2
    assert count("413") == before_413 + 1
    text = httpx.get(server.base + "/metrics").text
    httpx.get(server.base + "/no/such/route/" + "x" * 50)
    assert 'path="(unmatched)"' in httpx.get(server.base + "/metrics").text
    assert "x" * 50 not in text  # a client cannot mint label values


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "code_interpreter"}]}, "tools[0].type"),
        ({"functions": [{"name": "f", "parameters": {}}]}, "functions"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "integer", "minimum": 1}},
                }
            },
            "response_format.json_schema.schema.minimum",
        ),
        ({"frobnicate": True}, "frobnicate"),
        ({"api_base": "http://198.51.100.7/v1"}, "api_base"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image_url",
                                "image_url": {"url": "data:image/png;base64,AAAA"},
                            }
                        ],
                    }
                ]
            },
            "messages[0].content[0]",
        ),
    ],
)
def test_unsupported_features_are_clear_400s(
    server: Server, extra: dict[str, Any], param: str
) -> None:
    body = {"model": CHAT, "messages": OK_MESSAGES, "max_tokens": 2, **extra}
    error = _error(_post(server, "/v1/chat/completions", json=body), 400)
    assert error["param"] == param
    assert error["code"] == "unsupported_parameter"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": EMBED, "input": ""}, "input[0]"),
        ({"model": EMBED, "input": []}, "input"),
        ({"model": EMBED, "input": [1, 2, 3]}, "input"),
        ({"model": EMBED, "input": "x", "encoding_format": "hex"}, "encoding_format"),
        ({"model": EMBED, "input": "x", "dimensions": 12}, "dimensions"),
        ({"model": EMBED, "input": "long " * 400}, "input"),
        ({"model": EMBED}, "input"),
    ],
)
def test_bad_embedding_requests(server: Server, body: dict[str, Any], param: str) -> None:
    error = _error(_post(server, "/v1/embeddings", json=body), 400)
    assert error["param"] == param


@pytest.mark.parametrize(
    ("headers", "param"),
    [
        ({"x-shipway-priority": "urgent"}, "x-shipway-priority"),
        ({"x-shipway-timeout": "soon"}, "x-shipway-timeout"),
        ({"x-shipway-timeout": "-1"}, "x-shipway-timeout"),
        ({"x-shipway-timeout": "100000"}, "x-shipway-timeout"),
        ({"x-shipway-timeout": "1_000"}, "x-shipway-timeout"),
        ({"x-shipway-timeout": "nan"}, "x-shipway-timeout"),
        ({"x-shipway-timeout": "1e3"}, "x-shipway-timeout"),
    ],
)
def test_bad_call_options(server: Server, headers: dict[str, str], param: str) -> None:
    body = {"model": CHAT, "messages": OK_MESSAGES, "max_tokens": 1}
    error = _error(_post(server, "/v1/chat/completions", json=body, headers=headers), 400)
    assert error["param"] == param


def test_a_body_timeout_above_the_limit_names_the_body_field(server: Server) -> None:
    body = {"model": CHAT, "messages": OK_MESSAGES, "max_tokens": 1, "timeout": 100000}
    error = _error(_post(server, "/v1/chat/completions", json=body), 400)
    assert error["param"] == "timeout"


def test_wrong_route_and_method(server: Server) -> None:
    wrong_method = httpx.get(server.base + "/v1/chat/completions")
    _error(wrong_method, 405)
    assert wrong_method.headers["allow"] == "POST"  # RFC 9110: a 405 says what is allowed
    error = _error(httpx.get(server.base + "/v2/everything"), 404)
    assert "/docs" not in error["message"]  # there is no /docs; say what is served instead
    assert "/v1/chat/completions" in error["message"]
    upload = httpx.post(server.base + "/v1/chat/completions", files={"file": b"data"})
    _error(upload, 415)


def test_json_with_a_form_content_type_is_accepted(server: Server) -> None:
    # What `curl -d '{...}'` sends.
    body = b'{"model": "smollm2-135m", "max_tokens": 1,'
    body += b' "messages": [{"role": "user", "content": "hi"}]}'
    response = _post(
        server,
        "/v1/chat/completions",
        content=body,
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200


def test_server_still_serves_after_all_that(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=CHAT, messages=OK_MESSAGES, max_tokens=2)
    assert reply.choices[0].message.content is not None
