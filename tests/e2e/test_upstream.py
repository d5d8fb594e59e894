"""The OpenAI-compatible upstream backend against a real fake upstream server (a subprocess)."""

from collections.abc import Iterator

import httpx
import numpy as np
import openai
import pytest
from tests.support.servers import SINGLE_ATTEMPT, Server, free_port, shipway_server


@pytest.fixture(scope="module")
def gateway(upstream: Server) -> Iterator[Server]:
    base = upstream.base + "/v1"

    def up(name: str, **extra: object) -> dict[str, object]:
        return {"backend": "openai", "base_url": base, "upstream_model": name, **extra}

    srv = shipway_server(
        {
            "embedded_models": False,
            # One attempt per request, no breaker: these tests map each fault to its status.
            # Retries, breakers and fallbacks are tested in test_resilience.py.
            "resilience": SINGLE_ATTEMPT,
            "models": {
                "up": up("echo", api_key_env="FAKE_UPSTREAM_KEY"),
                "up-400": up("fail-400"),
                "up-401": up("fail-401"),
                "up-429": up("fail-429"),
                "up-500": up("fail-500"),
                "up-garbage": up("garbage"),
                "up-cut": up("cut-body"),
                "up-break": up("break-stream"),
                "up-error-stream": up("error-stream"),
                "up-slow": up("slow-5", queue={"timeout_s": 0.5}),
                "up-huge": up("huge-2", max_answer_bytes=1024 * 1024),
                "up-big": up("huge-0.5", max_answer_bytes=1024 * 1024),
                "up-down": {"backend": "openai", "base_url": f"http://127.0.0.1:{free_port()}/v1"},
            },
        },
        env={"FAKE_UPSTREAM_KEY": "sk-test-123"},
    )
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(gateway: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base + "/v1", api_key="x", max_retries=0, timeout=30)


def test_plain_chat_maps_model_and_sends_key(client: openai.OpenAI, upstream: Server) -> None:
    reply = client.chat.completions.create(
        model="up", messages=[{"role": "user", "content": "hello there"}], temperature=0.3
    )
    assert reply.choices[0].message.content == "echo: hello there"
    assert reply.model == "up"  # the alias the client asked for, not the upstream's name
    assert reply.usage and reply.usage.completion_tokens == 3
    seen = httpx.get(upstream.base + "/_last").json()
    assert seen["body"]["model"] == "echo"
    assert seen["body"]["temperature"] == 0.3
    assert seen["headers"]["Authorization"] == "Bearer sk-test-123"


def test_fields_that_would_pick_an_endpoint_or_key_are_not_forwarded(
    gateway: Server, upstream: Server
) -> None:
    smuggled = {
        "api_base": "http://198.51.100.7/v1",
        "base_url": "http://198.51.100.7/v1",
        "api_key": "sk-attacker",
        "extra_headers": {"Authorization": "Bearer sk-attacker"},
        "top_k": 5,  # a vendor extension: still forwarded
    }
    body = {"model": "up", "messages": [{"role": "user", "content": "hi"}], **smuggled}
    response = httpx.post(gateway.base + "/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 200, response.text
    seen = httpx.get(upstream.base + "/_last").json()
    assert not {"api_base", "base_url", "api_key", "extra_headers"} & set(seen["body"])
    assert seen["body"]["top_k"] == 5
    assert seen["headers"]["Authorization"] == "Bearer sk-test-123"


def test_streaming_is_relayed_chunk_by_chunk(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="up", messages=[{"role": "user", "content": "one two three"}], stream=True
    )
    chunks = list(stream)
    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert pieces == ["echo:", " one", " two", " three"]
    assert all(c.model == "up" for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)  # the client did not ask for usage


def test_streaming_usage_only_when_asked(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="up",
            messages=[{"role": "user", "content": "a b"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 3


def test_embeddings_through_upstream(client: openai.OpenAI) -> None:
    reply = client.embeddings.create(model="up", input=["a", "b"], encoding_format="float")
    assert len(reply.data) == 2 and len(reply.data[0].embedding) == 8
    again = client.embeddings.create(model="up", input=["a"])
    assert np.allclose(reply.data[0].embedding, again.data[0].embedding, atol=1e-6)


@pytest.mark.parametrize(
    ("model", "status", "code"),
    [
        ("up-400", 400, "upstream_rejected"),
        ("up-401", 502, "upstream_auth_failed"),
        ("up-429", 429, "upstream_rejected"),
        ("up-500", 502, "upstream_error"),
        ("up-garbage", 502, "upstream_error"),
        ("up-cut", 502, "upstream_error"),
        ("up-down", 502, "upstream_error"),
        ("up-slow", 504, "timeout"),
    ],
)
def test_upstream_failures_are_mapped(gateway: Server, model: str, status: int, code: str) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": "x"}]}
    response = httpx.post(gateway.base + "/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert model in error["message"] or code == "timeout"
    if model == "up-429":
        assert response.headers["retry-after"] == "7"


@pytest.mark.parametrize("model", ["up-500", "up-garbage"])
def test_stream_that_fails_before_content_gets_a_status(gateway: Server, model: str) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": "x"}], "stream": True}
    response = httpx.post(gateway.base + "/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 502
    assert model in response.json()["error"]["message"]


def test_huge_stream_events_are_relayed(client: openai.OpenAI) -> None:
    word = "w" * 700_000  # one SSE line far over aiohttp's own line limit
    chunks = list(
        client.chat.completions.create(
            model="up", messages=[{"role": "user", "content": word}], stream=True
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == f"echo: {word}"


def test_nesting_deeper_than_can_be_forwarded_is_a_400(gateway: Server) -> None:
    deep: object = "x"
    for _ in range(300):
        deep = [deep]
    body = {"model": "up", "messages": [{"role": "user", "content": "x"}], "metadata": deep}
    response = httpx.post(gateway.base + "/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400


@pytest.mark.parametrize("model", ["up-break", "up-error-stream"])
def test_stream_that_breaks_mid_way_ends_with_an_error_event(
    client: openai.OpenAI, model: str
) -> None:
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "one two three four"}], stream=True
    )
    with pytest.raises(openai.APIError) as info:
        for _ in stream:
            pass
    assert model in str(info.value.message)


def test_gateway_refuses_to_start_without_the_key(upstream: Server) -> None:
    import subprocess
    import sys
    import tempfile

    import yaml

    config = {
        "embedded_models": False,
        "models": {
            "up": {
                "backend": "openai",
                "base_url": upstream.base + "/v1",
                "api_key_env": "SHIPWAY_TEST_UNSET_KEY",
            }
        },
    }
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(config, f)
    result = subprocess.run(
        [sys.executable, "-m", "shipway", "serve", "--config", f.name, "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "SHIPWAY_TEST_UNSET_KEY is not set" in result.stderr


def test_an_answer_over_max_answer_bytes_is_a_502_and_the_next_one_is_served(
    gateway: Server,
) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}]}
    url = gateway.base + "/v1/chat/completions"
    too_big = httpx.post(url, json={**body, "model": "up-huge"}, timeout=30)
    assert too_big.status_code == 502
    assert "max_answer_bytes" in too_big.json()["error"]["message"]
    # Under the limit is served whole; the connection pool is not left holding the rest.
    for _ in range(2):
        fine = httpx.post(url, json={**body, "model": "up-big"}, timeout=30)
        assert fine.status_code == 200
        assert len(fine.json()["choices"][0]["message"]["content"]) == 512 * 1024
