"""Our responses validate against OpenAI's published OpenAPI schema, field for field."""

import base64

import httpx
import orjson
import pytest
from tests.e2e.conftest import CHAT, EMBED
from tests.support.openai_spec import assert_conforms
from tests.support.servers import Server

MESSAGES = [{"role": "user", "content": "Say hi."}]


def _post(server: Server, path: str, body: dict) -> httpx.Response:
    return httpx.post(server.base + path, json=body, timeout=60)


def test_chat_completion(server: Server) -> None:
    response = _post(
        server, "/v1/chat/completions", {"model": CHAT, "messages": MESSAGES, "max_tokens": 5}
    )
    assert response.headers["content-type"] == "application/json"
    assert_conforms(response.json(), "CreateChatCompletionResponse")


def test_chat_completion_with_logprobs(server: Server) -> None:
    body = {
        "model": CHAT,
        "messages": MESSAGES,
        "max_tokens": 3,
        "logprobs": True,
        "top_logprobs": 2,
    }
    assert_conforms(
        _post(server, "/v1/chat/completions", body).json(), "CreateChatCompletionResponse"
    )


@pytest.mark.parametrize("include_usage", [True, False])
def test_stream_chunks(server: Server, include_usage: bool) -> None:
    body = {
        "model": CHAT,
        "messages": MESSAGES,
        "max_tokens": 5,
        "stream": True,
        "logprobs": True,
        "stream_options": {"include_usage": include_usage},
    }
    with httpx.stream("POST", server.base + "/v1/chat/completions", json=body, timeout=60) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    for event in events[:-1]:
        assert_conforms(orjson.loads(event), "CreateChatCompletionStreamResponse")


@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_embeddings(server: Server, encoding: str) -> None:
    body = {"model": EMBED, "input": ["one", "two"], "encoding_format": encoding}
    data = _post(server, "/v1/embeddings", body).json()
    if encoding == "base64":
        # The spec types `embedding` as a float array; base64 is the documented alternative.
        for row in data["data"]:
            assert len(base64.b64decode(row["embedding"])) == 384 * 4
            row["embedding"] = [0.0]
    assert_conforms(data, "CreateEmbeddingResponse")


def test_models(server: Server) -> None:
    assert_conforms(httpx.get(server.base + "/v1/models").json(), "ListModelsResponse")
    assert_conforms(httpx.get(server.base + f"/v1/models/{CHAT}").json(), "Model")


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/chat/completions", {"model": "nope", "messages": MESSAGES}),
        ("POST", "/v1/chat/completions", {"model": CHAT}),
        ("POST", "/v1/embeddings", {"model": EMBED, "input": []}),
        ("GET", "/v1/models/nope", None),
        ("GET", "/nowhere", None),
    ],
)
def test_errors(server: Server, method: str, path: str, body: dict | None) -> None:
    response = httpx.request(method, server.base + path, json=body, timeout=60)
    assert response.status_code >= 400
    assert_conforms(response.json(), "ErrorResponse")
