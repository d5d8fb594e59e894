"""``POST /v1/completions`` through the official client: the embedded SmolLM2 and an upstream
(the fake one), bodies and stream events checked against OpenAI's published schema."""

import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest
from tests.e2e.conftest import CHAT
from tests.support.openai_spec import assert_conforms
from tests.support.servers import SINGLE_ATTEMPT, Server, shipway_server

PROMPT = "The capital of France is"


def _events(base: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    with httpx.stream("POST", base + "/v1/completions", json=body, timeout=60) as response:
        assert response.status_code == 200, response.read()
        lines = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [orjson.loads(line) for line in lines[:-1]]


def _conforms_chunk(chunk: dict[str, Any]) -> None:
    """OpenAI's schema is shared by plain bodies and stream chunks (it says so) and does not
    allow a null ``finish_reason``, yet OpenAI's own streams send null until the last chunk,
    as Shipway does: that one field is checked here, the rest by the schema."""
    chunk = {**chunk, "choices": [dict(c) for c in chunk["choices"]]}
    for choice in chunk["choices"]:
        if choice["finish_reason"] is None:
            choice["finish_reason"] = "stop"
    assert_conforms(chunk, "CreateCompletionResponse")


def _bad(base: str, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(base + "/v1/completions", json=body, timeout=60)
    assert response.status_code == 400, response.text
    assert_conforms(response.json(), "ErrorResponse")
    error: dict[str, Any] = response.json()["error"]
    return error


# -- the embedded model --------------------------------------------------------------------------
def test_plain_completion_continues_the_prompt_as_text(
    client: openai.OpenAI, server: Server
) -> None:
    reply = client.completions.create(model=CHAT, prompt=PROMPT, max_tokens=6, temperature=0)
    assert reply.object == "text_completion" and reply.id.startswith("cmpl-")
    assert reply.model == CHAT
    # No chat template: a base-model continuation, not an assistant's answer to a question.
    assert reply.choices[0].text.startswith(" Paris")
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage and 0 < reply.usage.completion_tokens <= 6
    assert reply.usage.prompt_tokens == 5
    body = {"model": CHAT, "prompt": PROMPT, "max_tokens": 3}
    response = httpx.post(server.base + "/v1/completions", json=body, timeout=60)
    assert_conforms(response.json(), "CreateCompletionResponse")


def test_stream_matches_plain_and_ends_with_usage(client: openai.OpenAI, server: Server) -> None:
    args: dict[str, Any] = {"model": CHAT, "prompt": PROMPT, "max_tokens": 8, "temperature": 0}
    plain = client.completions.create(**args)
    chunks = list(
        client.completions.create(**args, stream=True, stream_options={"include_usage": True})
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == plain.choices[0].text
    assert chunks[-1].choices == [] and chunks[-1].usage == plain.usage
    assert chunks[-2].choices[0].finish_reason == plain.choices[0].finish_reason
    assert all(c.object == "text_completion" and c.model == CHAT for c in chunks)
    for include_usage in (True, False):
        body = {**args, "stream": True, "logprobs": 1}
        events = _events(server.base, {**body, "stream_options": {"include_usage": include_usage}})
        assert ("usage" in events[-1]) is include_usage
        for event in events:
            _conforms_chunk(event)


def test_echo_puts_the_prompt_in_front(client: openai.OpenAI) -> None:
    args: dict[str, Any] = {"model": CHAT, "prompt": PROMPT, "max_tokens": 4, "temperature": 0}
    plain = client.completions.create(**args).choices[0].text
    assert client.completions.create(**args, echo=True).choices[0].text == PROMPT + plain
    streamed = client.completions.create(**args, echo=True, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == PROMPT + plain


def test_logprobs_in_the_legacy_shape(client: openai.OpenAI, server: Server) -> None:
    reply = client.completions.create(
        model=CHAT, prompt=PROMPT, max_tokens=4, temperature=0, logprobs=2
    )
    choice = reply.choices[0]
    assert choice.logprobs is not None and choice.logprobs.tokens is not None
    assert reply.usage is not None
    assert len(choice.logprobs.tokens) == reply.usage.completion_tokens
    assert "".join(choice.logprobs.tokens) == choice.text
    assert choice.logprobs.text_offset is not None
    assert choice.logprobs.text_offset[0] == len(PROMPT)  # counted from the prompt's start
    assert choice.logprobs.top_logprobs is not None
    for token, top in zip(choice.logprobs.tokens, choice.logprobs.top_logprobs, strict=True):
        assert token in top and 2 <= len(top) <= 3  # the 2 best and the sampled token
    streamed = list(
        client.completions.create(
            model=CHAT, prompt=PROMPT, max_tokens=4, temperature=0, logprobs=2, stream=True
        )
    )
    offsets = [o for c in streamed if c.choices for o in c.choices[0].logprobs.text_offset or []]
    assert offsets == choice.logprobs.text_offset
    body = {"model": CHAT, "prompt": PROMPT, "max_tokens": 3, "logprobs": 0}
    data = httpx.post(server.base + "/v1/completions", json=body, timeout=60).json()
    assert_conforms(data, "CreateCompletionResponse")
    assert all(len(top) == 1 for top in data["choices"][0]["logprobs"]["top_logprobs"])


def test_stop_sequence(client: openai.OpenAI) -> None:
    reply = client.completions.create(
        model=CHAT, prompt=PROMPT, max_tokens=8, temperature=0, stop=["."]
    )
    assert reply.choices[0].text == " Paris" and reply.choices[0].finish_reason == "stop"


def test_a_list_of_prompts_is_one_choice_each(client: openai.OpenAI) -> None:
    prompts = [PROMPT, "One, two, three,"]
    args: dict[str, Any] = {"model": CHAT, "max_tokens": 3, "temperature": 0}
    alone = [client.completions.create(**args, prompt=p) for p in prompts]
    reply = client.completions.create(**args, prompt=prompts)
    assert [c.index for c in reply.choices] == [0, 1]
    assert [c.text for c in reply.choices] == [a.choices[0].text for a in alone]
    assert reply.usage is not None
    assert reply.usage.total_tokens == sum(a.usage.total_tokens for a in alone if a.usage)
    streamed = list(client.completions.create(**args, prompt=prompts, stream=True))
    for i, expected in enumerate(reply.choices):
        text = "".join(c.choices[0].text for c in streamed if c.choices and c.choices[0].index == i)
        assert text == expected.text


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"suffix": "and that is all."}, "suffix"),
        ({"prompt": [1212, 318]}, "prompt"),
        ({"prompt": [[1212], [318]]}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"best_of": 2}, "best_of"),
        ({"echo": True, "logprobs": 1}, "echo"),  # no prompt logprobs from the local runner
        ({"logprobs": 6}, "logprobs"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"frobnicate": 1}, "frobnicate"),
        ({"prompt": "bell \x07"}, "prompt"),
        ({"prompt": ["fine", "bell \x07"]}, "prompt[1]"),
        ({"prompt": "word " * 2100}, "prompt"),  # over the 2,048-token context
    ],
)
def test_refusals_name_the_parameter(server: Server, extra: dict[str, Any], param: str) -> None:
    error = _bad(server.base, {"model": CHAT, "prompt": PROMPT, "max_tokens": 2, **extra})
    assert error["param"] == param, error
    if param == "suffix":
        assert "not supported" in error["message"]


def test_the_client_raises_bad_request_for_suffix(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=CHAT, prompt=PROMPT, suffix="!", max_tokens=2)
    assert info.value.param == "suffix"


def _wait_until_idle(server: Server, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        workers = httpx.get(server.base + "/readyz").json()["models"][CHAT]["workers"]
        if all(w["state"] != "busy" for w in workers):
            return
        time.sleep(0.02)
    raise AssertionError(f"workers still busy after {within_s}s: {workers}")


LONG = {"model": CHAT, "prompt": ["Once upon a time", "Long ago"], "ignore_eos": True}


def test_a_client_that_leaves_a_list_stream_frees_the_worker(server: Server) -> None:
    body = {**LONG, "max_tokens": 1800, "stream": True}
    with httpx.stream("POST", server.base + "/v1/completions", json=body, timeout=60) as r:
        events = 0
        for line in r.iter_lines():
            events += line.startswith("data: ")
            if events >= 3:
                break
    _wait_until_idle(server, 4)  # 2 x 1800 tokens would take well over 10 s


def test_a_client_that_leaves_a_list_request_frees_the_worker(server: Server) -> None:
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.base + "/v1/completions", json={**LONG, "max_tokens": 1800}, timeout=1)
    _wait_until_idle(server, 4)


# -- an upstream ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gateway(upstream: Server) -> Iterator[Server]:
    def up(name: str, **extra: object) -> dict[str, object]:
        return {"backend": "openai", "base_url": upstream.base + "/v1", "upstream_model": name}

    srv = shipway_server(
        {
            "embedded_models": False,
            "resilience": SINGLE_ATTEMPT,  # each fault's own status, not the retries
            "models": {
                "up": up("echo"),
                "up-pii": {**up("echo"), "guards": {"pii": "redact"}},
                "up-400": up("fail-400"),
                "up-429": up("fail-429"),
                "up-500": up("fail-500"),
                "up-error-stream": up("error-stream"),
                "up-huge": {**up("huge-2"), "max_answer_bytes": 1024 * 1024},
            },
        }
    )
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def up_client(gateway: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base + "/v1", api_key="x", max_retries=0, timeout=30)


def _seen(upstream: Server) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(upstream.base + "/_last").json()["body"]
    return body


def test_upstream_gets_the_body_at_its_completions_endpoint(
    up_client: openai.OpenAI, gateway: Server, upstream: Server
) -> None:
    reply = up_client.completions.create(model="up", prompt="hello there", temperature=0.3)
    assert reply.choices[0].text == "echo: hello there" and reply.model == "up"
    assert reply.id.startswith("cmpl-")
    seen = _seen(upstream)
    assert seen["model"] == "echo" and seen["prompt"] == "hello there"
    assert seen["temperature"] == 0.3
    assert seen["max_tokens"] == 16  # OpenAI's legacy default: this model sets none
    echoed = up_client.completions.create(model="up", prompt="hi", echo=True, logprobs=1)
    assert echoed.choices[0].text == "hiecho: hi"
    assert echoed.choices[0].logprobs and echoed.choices[0].logprobs.tokens == ["hiecho: hi"]
    body = {"model": "up", "prompt": "hi", "logprobs": 1}
    data = httpx.post(gateway.base + "/v1/completions", json=body, timeout=30).json()
    assert_conforms(data, "CreateCompletionResponse")


def test_upstream_stream_and_list_of_prompts(up_client: openai.OpenAI, gateway: Server) -> None:
    chunks = list(up_client.completions.create(model="up", prompt="one two", stream=True))
    assert [c.choices[0].text for c in chunks if c.choices] == ["echo:", " one", " two", ""]
    assert all(c.usage is None for c in chunks)  # not asked for
    reply = up_client.completions.create(model="up", prompt=["a", "b c"])
    assert [(c.index, c.text) for c in reply.choices] == [(0, "echo: a"), (1, "echo: b c")]
    assert reply.usage is not None and reply.usage.total_tokens == (1 + 2) + (2 + 3)
    body = {"model": "up", "prompt": ["a", "b"], "stream": True, "logprobs": 1}
    events = _events(gateway.base, {**body, "stream_options": {"include_usage": True}})
    assert events[-1]["usage"]["completion_tokens"] == 4
    for event in events:
        _conforms_chunk(event)
    assert {c["index"] for e in events for c in e["choices"]} == {0, 1}


def test_pii_is_redacted_upstream_and_restored_in_the_answer(
    up_client: openai.OpenAI, upstream: Server
) -> None:
    prompt = "write to bob.smith@example.com"
    reply = up_client.completions.create(model="up-pii", prompt=prompt)
    assert "bob.smith@example.com" not in _seen(upstream)["prompt"]
    assert reply.choices[0].text == f"echo: {prompt}"
    chunks = up_client.completions.create(model="up-pii", prompt=prompt, stream=True)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == f"echo: {prompt}"


@pytest.mark.parametrize(
    ("model", "status", "stream"),
    [
        *[
            (m, s, stream)
            for m, s in [("up-400", 400), ("up-429", 429), ("up-500", 502)]
            for stream in (False, True)
        ],
        ("up-huge", 502, False),  # over max_answer_bytes
    ],
)
def test_upstream_errors_keep_their_status(
    gateway: Server, model: str, status: int, stream: bool
) -> None:
    body = {"model": model, "prompt": "x", "stream": stream}
    response = httpx.post(gateway.base + "/v1/completions", json=body, timeout=30)
    assert response.status_code == status, response.text
    assert_conforms(response.json(), "ErrorResponse")
    assert model in response.json()["error"]["message"]


def test_upstream_failure_mid_stream_is_an_error_event(up_client: openai.OpenAI) -> None:
    stream = up_client.completions.create(model="up-error-stream", prompt="a b c", stream=True)
    with pytest.raises(openai.APIError) as info:
        for _ in stream:
            pass
    assert "up-error-stream" in str(info.value.message)


def test_a_list_of_prompts_is_one_access_line_with_the_sums(gateway: Server) -> None:
    def calls() -> float:
        metrics = httpx.get(gateway.base + "/metrics", timeout=10).text
        line = 'shipway_requests_total{endpoint="completions",model="up",status="200"}'
        return sum(float(x.rsplit(" ", 1)[1]) for x in metrics.splitlines() if x.startswith(line))

    before = calls()
    body = {"model": "up", "prompt": ["a", "b c"]}
    answer = httpx.post(gateway.base + "/v1/completions", json=body, timeout=30).json()
    request_id = answer["id"].removeprefix("cmpl-")
    assert calls() == before + 2  # each prompt is a model call
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = [
            orjson.loads(line)
            for line in gateway.log.read_text(errors="replace").splitlines()
            if line.startswith("{") and request_id in line and '"path"' in line
        ]
        if lines:
            break
        time.sleep(0.1)
    assert len(lines) == 1, lines
    assert (lines[0]["prompt_tokens"], lines[0]["completion_tokens"]) == (1 + 2, 2 + 3)
    assert lines[0]["status"] == 200 and lines[0]["model"] == "up"
