"""Rate limits and input limits against real servers, and rate limits that hold across two
server processes sharing Redis and PostgreSQL under concurrent load.

Limits count in fixed windows aligned to the clock (60 s here), so each test that must stay
in one window first waits out the end of the current one if it is too close.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from tests.support.keys import bearer, create_key, shipway_cli, wait_until
from tests.support.live_stores import postgres_database, redis_database
from tests.support.servers import Server, shipway_server

WINDOW_S = 60.0


def _window_headroom(now_s: Callable[[], float], need_s: float = 8) -> None:
    """Wait for a new window if the current one ends within ``need_s``."""
    left = WINDOW_S - now_s() % WINDOW_S
    if left < need_s:
        time.sleep(left + 0.1)


def _models(upstream: Server) -> dict[str, Any]:
    echo = {"backend": "openai", "base_url": upstream.base + "/v1", "upstream_model": "echo"}
    return {
        "embedded_models": False,
        "models": {"m": {**echo, "max_tokens_limit": 50}, "m2": echo},
    }


@pytest.fixture(scope="module")
def gateway(upstream: Server) -> Iterator[Server]:
    srv = shipway_server(_models(upstream))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def admin(gateway: Server) -> str:
    return create_key(gateway, "root", "--admin").key


def _key(http: httpx.Client, gateway: Server, admin: str, **body: Any) -> str:
    response = http.post(gateway.base + "/admin/keys", headers=bearer(admin), json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["key"])


def _chat(
    http: httpx.Client, gateway: Server, key: str, text: str = "hi", model: str = "m2", **extra: Any
) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": text}], **extra}
    return http.post(gateway.base + "/v1/chat/completions", headers=bearer(key), json=body)


def _refusal(response: httpx.Response, kind: str) -> dict[str, Any]:
    assert response.status_code == 429, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["type"] == kind and error["code"] == "rate_limit_exceeded", error
    return error


def test_requests_per_minute(gateway: Server, http: httpx.Client) -> None:
    key = create_key(gateway, "five-a-minute", "--rpm", "5").key
    _window_headroom(time.time)
    remaining = []
    for _ in range(5):
        response = _chat(http, gateway, key)
        assert response.status_code == 200, response.text
        assert response.headers["x-ratelimit-limit-requests"] == "5"
        assert response.headers["x-ratelimit-reset-requests"].endswith("s")
        remaining.append(int(response.headers["x-ratelimit-remaining-requests"]))
    assert remaining == [4, 3, 2, 1, 0]
    refused = _chat(http, gateway, key)
    error = _refusal(refused, "requests")
    assert "five-a-minute" in error["message"] and "Limit 5" in error["message"]
    assert 1 <= int(refused.headers["retry-after"]) <= WINDOW_S
    assert refused.headers["x-ratelimit-limit-requests"] == "5"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    # Still refused: a refusal takes nothing, and nothing was given back.
    assert _chat(http, gateway, key).status_code == 429


def test_tokens_per_minute_reserve_max_tokens(
    gateway: Server, http: httpx.Client, admin: str
) -> None:
    key = _key(http, gateway, admin, name="hundred-tokens", tpm=100)
    _window_headroom(time.time)
    too_large = _chat(http, gateway, key, max_tokens=200)
    error = _refusal(too_large, "tokens")
    assert "Request too large" in error["message"]
    assert "retry-after" not in too_large.headers  # waiting cannot make it fit
    words = " ".join(["w"] * 30)  # 59 characters: 15 tokens reserved, 30 counted upstream
    first = _chat(http, gateway, key, words, max_tokens=40)
    assert first.status_code == 200, first.text
    assert first.headers["x-ratelimit-limit-tokens"] == "100"
    assert first.headers["x-ratelimit-remaining-tokens"] == "45"  # 15 + 40 reserved
    assert first.json()["usage"]["total_tokens"] == 61  # settled: 61 of 100 used
    second = _chat(http, gateway, key, words, max_tokens=40)  # 61 + 55 > 100
    _refusal(second, "tokens")
    assert 1 <= int(second.headers["retry-after"]) <= WINDOW_S
    small = _chat(http, gateway, key, "x", max_tokens=10)  # 61 + 11 fits
    assert small.status_code == 200, small.text


def test_team_limit_is_shared_by_its_keys(gateway: Server, http: httpx.Client, admin: str) -> None:
    made = shipway_cli(gateway, "teams", "create", "--name", "three", "--rpm", "3")
    assert made.returncode == 0, made.stderr
    one = _key(http, gateway, admin, name="one", team="three")
    two = _key(http, gateway, admin, name="two", team="three")
    _window_headroom(time.time)
    for key in (one, two, one):
        response = _chat(http, gateway, key)
        assert response.status_code == 200, response.text
    error = _refusal(_chat(http, gateway, two), "requests")
    assert "team 'three'" in error["message"]
    _refusal(_chat(http, gateway, one), "requests")
    assert _chat(http, gateway, admin).status_code == 200  # no team, no limit


def _upstream_body(http: httpx.Client, upstream: Server) -> dict[str, Any]:
    body: dict[str, Any] = http.get(upstream.base + "/_last").json()["body"]
    return body


def test_max_tokens_caps(gateway: Server, upstream: Server, http: httpx.Client, admin: str) -> None:
    capped = _key(http, gateway, admin, name="capped", max_tokens=20)
    # The model's cap (models.m.max_tokens_limit: 50).
    over = _chat(http, gateway, admin, model="m", max_tokens=51)
    assert over.status_code == 400
    assert over.json()["error"]["param"] == "max_tokens"
    assert "50" in over.json()["error"]["message"]
    assert _chat(http, gateway, admin, model="m", max_tokens=50).status_code == 200
    assert _chat(http, gateway, admin, model="m").status_code == 200
    assert _upstream_body(http, upstream)["max_tokens"] == 50
    assert _chat(http, gateway, admin, model="m2").status_code == 200
    assert "max_tokens" not in _upstream_body(http, upstream)  # no cap anywhere: none sent
    # The key's cap, under the model's.
    for model in ("m", "m2"):
        over = _chat(http, gateway, capped, model=model, max_tokens=21)
        assert over.status_code == 400 and over.json()["error"]["param"] == "max_tokens"
        assert "this key" in over.json()["error"]["message"]
        newer = _chat(http, gateway, capped, model=model, max_completion_tokens=21)
        assert newer.status_code == 400
        assert newer.json()["error"]["param"] == "max_completion_tokens"
        assert _chat(http, gateway, capped, model=model).status_code == 200
        assert _upstream_body(http, upstream)["max_tokens"] == 20
    streamed = _chat(http, gateway, capped, model="m2", stream=True)
    assert streamed.status_code == 200 and streamed.text.endswith("data: [DONE]\n\n")
    assert _upstream_body(http, upstream)["max_tokens"] == 20


@pytest.mark.parametrize(
    ("text", "char"),
    [("a\x00b", "U+0000"), ("\x1b[31mred", "U+001B"), ("del\x7f", "U+007F"), ("b\x08s", "U+0008")],
)
def test_control_characters_are_refused(
    gateway: Server, http: httpx.Client, admin: str, text: str, char: str
) -> None:
    response = _chat(http, gateway, admin, text)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "messages[0].content" and char in error["message"]
    parts = [{"type": "text", "text": "fine"}, {"type": "text", "text": text}]
    body = {
        "model": "m2",
        "messages": [{"role": "system", "content": "ok"}, {"role": "user", "content": parts}],
    }
    response = http.post(gateway.base + "/v1/chat/completions", headers=bearer(admin), json=body)
    assert (
        response.status_code == 400 and response.json()["error"]["param"] == "messages[1].content"
    )
    embed = {"model": "m2", "input": ["fine", text]}
    response = http.post(gateway.base + "/v1/embeddings", headers=bearer(admin), json=embed)
    assert response.status_code == 400 and response.json()["error"]["param"] == "input[1]"


def test_tab_newline_and_carriage_return_pass(
    gateway: Server, upstream: Server, http: httpx.Client, admin: str
) -> None:
    text = "col1\tcol2\r\nline two\n"
    response = _chat(http, gateway, admin, text)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == f"echo: {text}"
    assert _upstream_body(http, upstream)["messages"][0]["content"] == text


# -- two replicas --------------------------------------------------------------------------


async def _burst(bases: list[str], key: str, count: int) -> list[httpx.Response]:
    body = {"model": "m2", "messages": [{"role": "user", "content": "hi"}]}
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        calls = [
            client.post(
                bases[i % len(bases)] + "/v1/chat/completions", headers=bearer(key), json=body
            )
            for i in range(count)
        ]
        return list(await asyncio.gather(*calls))


def test_rate_limit_holds_across_two_replicas_under_load(upstream: Server) -> None:
    with postgres_database() as database_url, redis_database() as (redis_url, redis_client):
        env = {
            "SHIPWAY_DATABASE_URL": database_url,
            "SHIPWAY_REDIS_URL": redis_url,
            "SHIPWAY_KEY_PEPPER": "replica-pepper-0123456789abcdef",
            "SHIPWAY_AUDIT_KEY": "replica-audit-key-0123456789abcdef",
        }
        replicas: list[Server] = []
        try:
            for _ in range(2):
                replicas.append(shipway_server(_models(upstream), env=env))
            key = create_key(replicas[0], "shared", "--rpm", "20", env=env)
            bases = [replica.base for replica in replicas]
            with httpx.Client(timeout=30) as http:
                # Each replica must have noticed that keys exist before the burst (see
                # test_security_access.py::test_requests_racing_the_first_key_check_are_refused).
                for base in bases:
                    wait_until(lambda b=base: http.get(b + "/v1/models").status_code == 401, 3)

            def redis_now() -> float:
                seconds, micros = redis_client.time()
                return float(seconds) + micros / 1e6

            _window_headroom(redis_now, need_s=15)
            responses = asyncio.run(_burst(bases, key.key, 60))
            statuses = Counter(response.status_code for response in responses)
            assert statuses == {200: 20, 429: 40}, statuses
            for response in responses:
                if response.status_code == 429:
                    assert response.json()["error"]["type"] == "requests"
            with httpx.Client(timeout=30) as http:
                for base in bases:  # the shared count holds on both afterwards
                    again = http.post(
                        base + "/v1/chat/completions",
                        headers=bearer(key.key),
                        json={"model": "m2", "messages": [{"role": "user", "content": "x"}]},
                    )
                    assert again.status_code == 429
                # A revocation reaches both replicas within auth.key_cache_s.
                revoked = shipway_cli(replicas[0], "keys", "revoke", str(key.id), env=env)
                assert revoked.returncode == 0, revoked.stderr

                def refused_everywhere() -> bool:
                    return all(
                        http.get(base + "/v1/models", headers=bearer(key.key)).status_code == 401
                        for base in bases
                    )

                assert wait_until(refused_everywhere, 1.5) <= 1.5
            # Both replicas and the CLI appended to one audit chain, and it is intact.
            time.sleep(0.5)  # audit.flush_interval_s
            verify = shipway_cli(replicas[1], "audit", "verify", env=env)
            assert verify.returncode == 0, verify.stdout + verify.stderr
            counted = re.match(r"(\d+) records, chain intact", verify.stdout)
            assert counted is not None and int(counted.group(1)) >= 60 + 2 + 2, verify.stdout
        finally:
            for replica in replicas:
                replica.stop()
