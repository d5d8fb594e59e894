"""`models.<alias>.defaults`: the embedded model's shipped sampling, and an upstream's defaults
in the body it is sent, each used only when the client leaves the field out."""

from collections.abc import Iterator

import httpx
import openai
import pytest
from tests.e2e.conftest import CHAT, EMBED
from tests.support.servers import Server, shipway_server

SHIPPED = {"temperature": 0.2, "top_p": 0.9, "max_tokens": 256}
STORY = [{"role": "user", "content": "Write a long story about a dragon and a knight."}]
UPSTREAM_DEFAULTS = {"temperature": 0.4, "max_tokens": 32, "stop": ["\n\n"], "seed": 3}


def test_a_request_without_a_length_stops_at_the_default(client: openai.OpenAI) -> None:
    # ignore_eos makes the answer run to whatever length applies, so the default is measured.
    reply = client.chat.completions.create(
        model=CHAT, messages=STORY, extra_body={"ignore_eos": True}
    )
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage and reply.usage.completion_tokens == SHIPPED["max_tokens"]


def test_the_clients_own_length_wins_over_the_default(client: openai.OpenAI) -> None:
    # Above the default, so the default is not acting as a cap either; streamed this time.
    chunks = list(
        client.chat.completions.create(
            model=CHAT,
            messages=STORY,
            max_tokens=SHIPPED["max_tokens"] + 4,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
    )
    usage = chunks[-1].usage
    assert usage and usage.completion_tokens == SHIPPED["max_tokens"] + 4
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length"


def test_readyz_shows_each_chat_models_defaults(server: Server) -> None:
    models = httpx.get(server.base + "/readyz").json()["models"]
    assert models[CHAT]["defaults"] == SHIPPED
    assert "defaults" not in models[EMBED]  # embeddings have nothing to sample


@pytest.fixture(scope="module")
def gateway(upstream: Server) -> Iterator[Server]:
    model = {
        "backend": "openai",
        "base_url": upstream.base + "/v1",
        "upstream_model": "echo",
        "max_tokens_limit": 64,
        "defaults": UPSTREAM_DEFAULTS,
    }
    srv = shipway_server({"embedded_models": False, "models": {"up": model}})
    yield srv
    srv.stop()


def _sent_upstream(gateway: Server, upstream: Server, **fields: object) -> dict[str, object]:
    client = openai.OpenAI(base_url=gateway.base + "/v1", api_key="x", max_retries=0, timeout=30)
    client.chat.completions.create(
        model="up",
        messages=[{"role": "user", "content": "hi"}],
        **fields,
    )
    body: dict[str, object] = httpx.get(upstream.base + "/_last").json()["body"]
    return body


def test_an_upstream_is_sent_the_defaults_for_omitted_fields_only(
    gateway: Server, upstream: Server
) -> None:
    omitted = _sent_upstream(gateway, upstream)
    for name, value in UPSTREAM_DEFAULTS.items():
        assert omitted[name] == value, name
    assert "top_p" not in omitted  # no default configured: the upstream's own applies

    own = _sent_upstream(gateway, upstream, temperature=1.1, max_tokens=10, stop=[])
    assert (own["temperature"], own["max_tokens"], own["stop"]) == (1.1, 10, [])
    assert own["seed"] == UPSTREAM_DEFAULTS["seed"]  # the one field still omitted

    renamed = _sent_upstream(gateway, upstream, max_completion_tokens=20)
    assert renamed["max_completion_tokens"] == 20 and "max_tokens" not in renamed


def test_readyz_shows_an_upstreams_defaults(gateway: Server) -> None:
    models = httpx.get(gateway.base + "/readyz").json()["models"]
    assert models["up"]["defaults"] == UPSTREAM_DEFAULTS
