"""Cost features through a real `shipway serve`: cache, prices, routes, budgets, caps, reports.

One server: the embedded SmolLM2 priced, a priced upstream (the fake upstream) behind the
`auto` route, budget rules on a team and on a tag, and keys in two teams, so the response
cache's team scoping, the route's choice and the budgets' refusals are all seen over HTTP
with the official client.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from tests.support.keys import bearer, create_key, shipway_cli, wait_until
from tests.support.servers import Server, shipway_server

CHAT = "smollm2-135m"
LOCAL_PRICE = {"input": 100.0, "output": 200.0}
UPSTREAM_PRICE = {"input": 5000.0, "output": 10000.0}
MESSAGES = [{"role": "user", "content": "Name one colour of the sky."}]


@pytest.fixture(scope="module")
def costly(upstream: Server) -> Iterator[Server]:
    config: dict[str, Any] = {
        "models": {
            CHAT: {"backend": "llamacpp", "price": LOCAL_PRICE, "max_prompt_tokens": 200},
            "pricey": {
                "backend": "openai",
                "base_url": upstream.base + "/v1",
                "upstream_model": "echo",
                "price": UPSTREAM_PRICE,
                "context_length": 100_000,
                "cache": {"semantic": True, "semantic_threshold": 0.8},
            },
        },
        "routes": {"auto": {"models": ["pricey", CHAT]}},
        "budgets": {
            "rules": [
                {
                    "name": "capped-team",
                    "scope": "team",
                    "match": ["capped"],
                    "window": "day",
                    "hard_limit": 0.15,
                },
                {
                    "name": "cheap-tag",
                    "scope": "tag",
                    "match": ["frugal"],
                    "window": "month",
                    "hard_limit": 0.000001,
                    "on_exceeded": "fallback",
                    "fallback_model": CHAT,
                    "models": ["pricey"],
                },
            ]
        },
    }
    srv = shipway_server(config)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def keys(costly: Server) -> dict[str, str]:
    made: dict[str, str] = {}
    for team in ("red", "blue", "capped"):
        result = shipway_cli(costly, "teams", "create", "--name", team)
        assert result.returncode == 0, result.stderr
        made[team] = create_key(costly, f"{team}-key", "--team", team).key
    made["admin"] = create_key(costly, "admin", "--admin").key
    made["capped-prompt"] = create_key(costly, "short", "--max-prompt-tokens", "5").key
    return made


@pytest.fixture(scope="module")
def clients(costly: Server, keys: dict[str, str]) -> Iterator[dict[str, openai.OpenAI]]:
    """The official client for each key, closed at the end (an open one leaks sockets)."""
    made = {
        name: openai.OpenAI(base_url=costly.base + "/v1", api_key=key, max_retries=0, timeout=120)
        for name, key in keys.items()
    }
    yield made
    for client in made.values():
        client.close()


def test_a_repeated_temperature_zero_request_is_a_hit_with_the_same_answer(
    costly: Server, keys: dict[str, str], clients: dict[str, openai.OpenAI]
) -> None:
    client = clients["red"]
    body: dict[str, Any] = {"model": CHAT, "messages": MESSAGES, "max_tokens": 12, "temperature": 0}
    first = client.chat.completions.with_raw_response.create(**body)
    second = client.chat.completions.with_raw_response.create(**body)
    assert first.headers["x-shipway-cache"] == "miss"
    assert second.headers["x-shipway-cache"] == "hit"
    assert second.parse().choices[0].message.content == first.parse().choices[0].message.content
    assert second.parse().usage == first.parse().usage

    # Streamed, the same request is the same answer, replayed as a proper stream.
    with client.chat.completions.with_streaming_response.create(
        **body, stream=True, stream_options={"include_usage": True}
    ) as streamed:
        assert streamed.headers["x-shipway-cache"] == "hit"
        chunks = list(streamed.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == first.parse().choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].choices == []

    # Another team never reads this team's answers.
    other = clients["blue"].chat.completions.with_raw_response.create(**body)
    assert other.headers["x-shipway-cache"] == "miss"


def test_the_client_can_skip_the_cache_and_sampled_requests_bypass_it(
    costly: Server, keys: dict[str, str], clients: dict[str, openai.OpenAI]
) -> None:
    client = clients["red"]
    body: dict[str, Any] = {"model": CHAT, "messages": MESSAGES, "max_tokens": 6, "temperature": 0}
    client.chat.completions.create(**body)
    skipped = client.chat.completions.with_raw_response.create(
        **body, extra_headers={"x-shipway-cache": "bypass"}
    )
    assert skipped.headers["x-shipway-cache"] == "bypass"
    no_cache = client.chat.completions.with_raw_response.create(
        **body, extra_headers={"Cache-Control": "no-cache"}
    )
    assert no_cache.headers["x-shipway-cache"] == "bypass"
    sampled = client.chat.completions.with_raw_response.create(**{**body, "temperature": 0.7})
    assert sampled.headers["x-shipway-cache"] == "bypass"


def test_the_semantic_cache_hits_a_paraphrase_within_one_team_only(
    costly: Server, keys: dict[str, str], clients: dict[str, openai.OpenAI]
) -> None:
    def ask(team: str, question: str) -> Any:
        return clients[team].chat.completions.with_raw_response.create(
            model="pricey",
            messages=[{"role": "user", "content": question}],
            max_tokens=10,
            temperature=0,
        )

    assert ask("red", "What is the capital of France?").headers["x-shipway-cache"] == "miss"
    paraphrase = ask("red", "Tell me the capital city of France.")
    assert paraphrase.headers["x-shipway-cache"] == "hit"
    assert ask("blue", "Tell me the capital city of France.").headers["x-shipway-cache"] == "miss"
    unrelated = ask("red", "How many legs does a spider have?")
    assert unrelated.headers["x-shipway-cache"] == "miss"


def test_cost_matches_the_price_table_plain_and_streamed(
    costly: Server, keys: dict[str, str]
) -> None:
    headers = {**bearer(keys["blue"]), "x-shipway-include-cost": "true"}
    plain = httpx.post(
        costly.base + "/v1/chat/completions",
        json={"model": CHAT, "messages": MESSAGES, "max_tokens": 8},
        headers=headers,
        timeout=120,
    ).json()
    usage = plain["usage"]
    expected = (
        usage["prompt_tokens"] * LOCAL_PRICE["input"]
        + usage["completion_tokens"] * LOCAL_PRICE["output"]
    ) / 1e6
    assert usage["cost"]["total"] == pytest.approx(expected, rel=1e-6)

    with httpx.stream(
        "POST",
        costly.base + "/v1/chat/completions",
        json={
            "model": "pricey",
            "messages": MESSAGES,
            "max_tokens": 8,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        headers=headers,
        timeout=120,
    ) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: {")]
    last = httpx.Response(200, content=lines[-1].removeprefix("data: ")).json()
    streamed = last["usage"]
    expected = (
        streamed["prompt_tokens"] * UPSTREAM_PRICE["input"]
        + streamed["completion_tokens"] * UPSTREAM_PRICE["output"]
    ) / 1e6
    assert streamed["cost"]["total"] == pytest.approx(expected, rel=1e-6)


def test_a_route_serves_the_cheapest_model_that_fits(
    costly: Server, keys: dict[str, str], clients: dict[str, openai.OpenAI]
) -> None:
    client = clients["blue"]
    cheap = client.chat.completions.with_raw_response.create(
        model="auto", messages=MESSAGES, max_tokens=8
    )
    assert cheap.headers["x-shipway-served-by"] == CHAT
    assert cheap.parse().model == CHAT
    # An answer longer than SmolLM2's 2,048-token context only fits the upstream.
    long = client.chat.completions.with_raw_response.create(
        model="auto", messages=MESSAGES, max_tokens=5000
    )
    assert long.headers["x-shipway-served-by"] == "pricey"
    assert "auto" in [m.id for m in client.models.list().data]


def test_a_team_budget_rejects_once_spent_and_never_overspends(
    costly: Server, keys: dict[str, str], clients: dict[str, openai.OpenAI]
) -> None:
    client = clients["capped"]
    statuses = []
    for _ in range(6):
        try:
            client.chat.completions.create(model="pricey", messages=MESSAGES, max_tokens=10)
            statuses.append(200)
        except openai.RateLimitError as error:
            statuses.append(429)
            assert error.code == "budget_exceeded"
            assert "capped-team" in error.message
            assert int(error.response.headers["retry-after"]) > 0
    assert statuses[0] == 200 and 429 in statuses
    _wait_for_report(costly, keys["admin"], "capped")
    report = httpx.get(
        costly.base + "/admin/costs",
        params={"by": "team", "since": "1d"},
        headers=bearer(keys["admin"]),
        timeout=30,
    ).json()
    spent = next(line for line in report["data"] if line["team"] == "capped")
    assert 0 < spent["cost"] <= 0.15


def test_a_fallback_budget_sends_the_call_to_the_cheaper_model(
    costly: Server, keys: dict[str, str], clients: dict[str, openai.OpenAI]
) -> None:
    answer = clients["blue"].chat.completions.with_raw_response.create(
        model="pricey",
        messages=MESSAGES,
        max_tokens=8,
        metadata={"tags": "frugal"},
    )
    assert answer.headers["x-shipway-served-by"] == CHAT
    assert answer.parse().model == CHAT


def test_prompt_size_caps_per_model_and_key_are_a_400_naming_the_param(
    costly: Server, keys: dict[str, str], clients: dict[str, openai.OpenAI]
) -> None:
    long = [{"role": "user", "content": "word " * 400}]
    with pytest.raises(openai.BadRequestError) as model_cap:
        clients["red"].chat.completions.create(model=CHAT, messages=long, max_tokens=4)
    assert model_cap.value.code == "prompt_too_long"
    assert model_cap.value.param == "messages"
    with pytest.raises(openai.BadRequestError) as key_cap:
        clients["capped-prompt"].chat.completions.create(
            model="pricey", messages=[{"role": "user", "content": "a" * 100}], max_tokens=4
        )
    assert key_cap.value.code == "prompt_too_long"


def _wait_for_report(server: Server, admin: str, team: str) -> None:
    """The cost ledger writes every second: wait until the team's rows are in."""

    def present() -> bool:
        data = httpx.get(
            server.base + "/admin/costs",
            params={"by": "team", "since": "1d"},
            headers=bearer(admin),
            timeout=30,
        ).json()
        return any(line.get("team") == team for line in data.get("data", []))

    wait_until(present, 15, 0.2)


def test_the_access_log_says_hit_miss_and_money_saved(costly: Server) -> None:
    text = costly.log.read_text(errors="replace")
    assert re.search(r'"cache": ?"hit"', text)
    assert re.search(r'"cache_saved": ?[0-9.e-]+', text)
