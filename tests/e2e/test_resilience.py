"""Keeping on answering through faults: retries, breakers, fallbacks, degradation, overload,
drain. Real servers and real faults: the fake upstream behind `shipway chaos proxy`, the
embedded model as the fallback, `shipway chaos run` as the load."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.e2e.conftest import CHAT
from tests.support.servers import Server, chaos_proxy, shipway_server

PLAIN = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}


def _metric(server: Server, name: str, **labels: str) -> float:
    """The sum of a Prometheus sample over the series whose labels include ``labels``."""
    text = httpx.get(server.base + "/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        if head.split("{")[0] != name:
            continue
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def _stats(proxy: Server) -> dict[str, Any]:
    stats: dict[str, Any] = httpx.get(proxy.base + "/_chaos/stats", timeout=10).json()
    return stats


def _set_faults(proxy: Server, **rates: float) -> None:
    response = httpx.post(proxy.base + "/_chaos/config", json=rates, timeout=10)
    assert response.status_code == 200, response.text


def _forwarded(proxy: Server) -> int:
    """Requests the proxy sent on to the upstream or failed itself: what reached "the
    upstream" as Shipway sees it."""
    stats = _stats(proxy)
    return int(stats["requests"])


@pytest.mark.slow
def test_chaos_2000_requests_through_faults_lose_nothing(upstream: Server) -> None:
    """20% 500s, 5% resets, 5% stalls of 10 s, 2% cut bodies on the primary; the embedded
    model as the fallback: every request answered, ≥ 99.5% successfully, retries ≤ 20%."""
    proxy = chaos_proxy(
        upstream.base,
        error_rate=0.2,
        reset_rate=0.05,
        stall_rate=0.05,
        stall_s=10,
        cut_rate=0.02,
        seed=11,
    )
    server = shipway_server(
        {
            "embedded_models": True,
            "auth": {"public_metrics": True},
            "server": {"access_log": False},
            "queue": {"max_waiting": 256},
            "models": {
                "primary": {
                    "backend": "openai",
                    "base_url": proxy.base + "/v1",
                    "upstream_model": "echo",
                    "fallbacks": [CHAT],
                    "resilience": {
                        "timeouts": {"first_token_s": 1.0, "total_s": 2.0},
                        "retries": {"max_retries": 2, "budget_min_retries": 0},
                        # A fifth of calls fail at random: a breaker would trip on luck.
                        "breaker": {"enabled": False},
                        "health_check": {"enabled": False},
                    },
                },
            },
        }
    )
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "shipway",
                "chaos",
                "run",
                "--url",
                server.base,
                "--model",
                "primary",
                "--requests",
                "2000",
                "--concurrency",
                "32",
                "--max-tokens",
                "2",
                "--timeout-s",
                "120",
                "--format",
                "json",
            ],
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        # Every request was sent and answered (a hung one would be a client timeout error).
        assert report["sent"] == 2000
        assert report["success_rate"] >= 0.995, report
        retries = _metric(server, "shipway_retries_total", model="primary")
        fallbacks = _metric(server, "shipway_fallbacks_total", from_model="primary")
        # Attempts on the primary: each request's first, plus the retries. (The budget is a
        # sliding window, so against the 2,000 requests alone it may edge a little over.)
        assert retries <= 0.2 * (2000 + retries), retries
        assert fallbacks > 0  # the faults were real, and the fallback served
        faults = _stats(proxy)
        assert faults["error"] > 0 and faults["reset"] > 0 and faults["stall"] > 0
    finally:
        server.stop()
        proxy.stop()


@pytest.fixture
def breaker_pair(upstream: Server) -> Iterator[tuple[Server, Server]]:
    proxy = chaos_proxy(upstream.base)
    server = shipway_server(
        {
            "embedded_models": False,
            "auth": {"public_metrics": True},
            "models": {
                "flaky": {
                    "backend": "openai",
                    "base_url": proxy.base + "/v1",
                    "upstream_model": "echo",
                    "resilience": {
                        "retries": {"max_retries": 0},
                        "breaker": {"consecutive_failures": 3, "cooldown_s": 1.0},
                        "health_check": {"enabled": False},
                    },
                },
            },
        }
    )
    yield server, proxy
    server.stop()
    proxy.stop()


def _ask(server: Server, model: str = "flaky") -> httpx.Response:
    return httpx.post(
        server.base + "/v1/chat/completions", json={"model": model, **PLAIN}, timeout=30
    )


def _breaker(server: Server, model: str = "flaky") -> dict[str, Any]:
    ready = httpx.get(server.base + "/readyz", timeout=10).json()
    breaker: dict[str, Any] = ready["models"][model]["resilience"]["breaker"]
    return breaker


def test_the_breaker_opens_fails_fast_probes_once_per_cooldown_and_closes(
    breaker_pair: tuple[Server, Server],
) -> None:
    server, proxy = breaker_pair
    assert _ask(server).status_code == 200
    _set_faults(proxy, error_rate=1.0)
    for _ in range(3):
        assert _ask(server).status_code == 502
    assert _breaker(server)["state"] == "open"

    # Open: nothing reaches the upstream; every call fails at once with 503 and Retry-After.
    reached = _forwarded(proxy)
    for _ in range(10):
        refused = _ask(server)
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "circuit_open"
        assert float(refused.headers["retry-after"]) >= 1
    assert _forwarded(proxy) == reached

    # After the cooldown exactly one probe goes through; it fails, so the breaker reopens.
    time.sleep(1.2)
    statuses = [_ask(server).status_code for _ in range(5)]
    assert _forwarded(proxy) == reached + 1
    assert statuses[0] == 502 and statuses[1:] == [503] * 4

    # The upstream recovers: the next probe succeeds and closes the breaker.
    _set_faults(proxy, error_rate=0.0)
    time.sleep(1.2)
    assert _ask(server).status_code == 200
    assert _breaker(server)["state"] == "closed"
    assert all(_ask(server).status_code == 200 for _ in range(5))
    opened = _metric(server, "shipway_breaker_transitions_total", model="flaky", to_state="open")
    closed = _metric(server, "shipway_breaker_transitions_total", model="flaky", to_state="closed")
    assert opened == 2 and closed == 1


def test_retries_ride_out_failures_and_the_access_log_lists_the_attempts(
    upstream: Server,
) -> None:
    """Every other call fails; with retries every client call succeeds."""
    proxy = chaos_proxy(upstream.base, error_rate=0.5, seed=3)
    server = shipway_server(
        {
            "embedded_models": False,
            "auth": {"public_metrics": True},
            "models": {
                "flaky": {
                    "backend": "openai",
                    "base_url": proxy.base + "/v1",
                    "upstream_model": "echo",
                    "resilience": {
                        "retries": {"max_retries": 5, "budget_ratio": 1.0},
                        "breaker": {"enabled": False},
                        "health_check": {"enabled": False},
                    },
                },
            },
        }
    )
    try:
        assert all(_ask(server).status_code == 200 for _ in range(20))
        assert _metric(server, "shipway_retries_total", model="flaky") > 0
        log = server.log.read_text(errors="replace")
        assert '"attempts":"flaky:server_error' in log.replace(" ", "")
    finally:
        server.stop()
        proxy.stop()


def test_a_model_that_cannot_load_is_unavailable_and_its_fallback_serves(
    tmp_path: Path, upstream: Server
) -> None:
    garbage = tmp_path / "broken.gguf"
    garbage.write_bytes(b"this is not a GGUF file" * 100)
    server = shipway_server(
        {
            "embedded_models": False,
            "workers": {"restart_backoff_s": 0.2},
            "models": {
                "broken": {"backend": "llamacpp", "path": str(garbage), "fallbacks": ["backup"]},
                "lonely": {"backend": "llamacpp", "path": str(garbage)},
                # Its prompts are PII-checked; its fallback's are not: it must not fall back.
                "careful": {
                    "backend": "llamacpp",
                    "path": str(garbage),
                    "fallbacks": ["backup"],
                    "guards": {"pii": "block"},
                },
                "backup": {
                    "backend": "openai",
                    "base_url": upstream.base + "/v1",
                    "upstream_model": "echo",
                },
            },
        },
        ready_path="/healthz",
    )
    try:
        for _ in range(300):
            model = httpx.get(server.base + "/readyz").json()["models"]["broken"]
            if model["workers"][0]["failed_loads"] > 0:
                break
            time.sleep(0.05)
        alone = _ask(server, "lonely")
        assert alone.status_code == 503
        assert "cannot be served" in alone.json()["error"]["message"]
        careful = _ask(server, "careful")
        assert careful.status_code == 503
        assert "cannot be served" in careful.json()["error"]["message"]
        served = _ask(server, "broken")
        assert served.status_code == 200, served.text
        assert served.headers["x-shipway-served-by"] == "backup"
        assert served.json()["model"] == "backup"
    finally:
        server.stop()


def test_when_every_model_fails_a_stale_cached_answer_is_served_marked(upstream: Server) -> None:
    """An answer cached while the upstream was up is served past its TTL once the upstream
    fails (and before the degraded reply), marked degraded and stale; a fresh question gets
    the degraded reply."""
    proxy = chaos_proxy(upstream.base)
    server = shipway_server(
        {
            "embedded_models": False,
            "cache": {"ttl_s": 1, "stale_s": 600},
            "models": {
                "cached": {
                    "backend": "openai",
                    "base_url": proxy.base + "/v1",
                    "upstream_model": "echo",
                    "degraded_reply": "Busy.",
                    "resilience": {
                        "retries": {"max_retries": 0},
                        "breaker": {"enabled": False},
                        "health_check": {"enabled": False},
                    },
                },
            },
        }
    )
    try:
        ask = {"model": "cached", "temperature": 0, **PLAIN}
        url = server.base + "/v1/chat/completions"
        fresh = httpx.post(url, json=ask, timeout=30)
        assert fresh.status_code == 200 and fresh.headers["x-shipway-cache"] == "miss"
        _set_faults(proxy, error_rate=1.0)
        time.sleep(1.2)  # past the entry's TTL
        stale = httpx.post(url, json=ask, timeout=30)
        assert stale.status_code == 200
        assert stale.headers["x-shipway-cache"] == "stale"
        assert stale.headers["x-shipway-degraded"] == "true"
        assert stale.json()["choices"] == fresh.json()["choices"]
        streamed = httpx.post(url, json={**ask, "stream": True}, timeout=30)
        assert streamed.headers["x-shipway-cache"] == "stale"
        assert fresh.json()["choices"][0]["message"]["content"] in "".join(
            json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
            for line in streamed.text.splitlines()
            if line.startswith("data: {") and '"choices":[{' in line.replace(" ", "")
        )
        other = httpx.post(url, json={**ask, "max_tokens": 5}, timeout=30)
        assert other.headers["x-shipway-degraded"] == "true"
        assert other.json()["choices"][0]["message"]["content"] == "Busy."
    finally:
        server.stop()
        proxy.stop()


def test_when_every_option_fails_the_degraded_reply_or_a_503(upstream: Server) -> None:
    dead = "http://127.0.0.1:9/v1"  # nothing listens on the discard port
    server = shipway_server(
        {
            "embedded_models": False,
            "resilience": {"retries": {"max_retries": 0}, "health_check": {"enabled": False}},
            "models": {
                "gentle": {
                    "backend": "openai",
                    "base_url": dead,
                    "fallbacks": ["also-dead"],
                    "degraded_reply": "We are busy; please try again in a minute.",
                },
                "strict": {"backend": "openai", "base_url": dead, "fallbacks": ["also-dead"]},
                "also-dead": {"backend": "openai", "base_url": dead},
            },
        }
    )
    try:
        gentle = _ask(server, "gentle")
        assert gentle.status_code == 200
        assert gentle.headers["x-shipway-degraded"] == "true"
        assert gentle.json()["choices"][0]["message"]["content"].startswith("We are busy")
        streamed = httpx.post(
            server.base + "/v1/chat/completions",
            json={"model": "gentle", "stream": True, **PLAIN},
            timeout=30,
        )
        assert streamed.headers["x-shipway-degraded"] == "true"
        assert "We are busy" in streamed.text and streamed.text.rstrip().endswith("[DONE]")
        strict = _ask(server, "strict")
        assert strict.status_code == 503
        assert strict.json()["error"]["code"] == "all_models_failed"
        assert "retry-after" in strict.headers
    finally:
        server.stop()


def test_overload_at_three_times_capacity_sheds_with_retry_after(upstream: Server) -> None:
    """4 upstream places and 8 waiting, each call 0.3 s: about 40 requests/s of capacity.
    Driven at 36 at once (3 times what fits) for a bounded time: every answer is a 200 or a
    shed 429/503 with Retry-After, the queue never holds more than its bound, and the
    server serves normally afterwards with an empty queue and about the same memory."""
    server = shipway_server(
        {
            "embedded_models": False,
            "models": {
                "slow": {
                    "backend": "openai",
                    "base_url": upstream.base + "/v1",
                    "upstream_model": "slow-0.3",
                    "max_concurrency": 4,
                    "queue": {"max_waiting": 8},
                },
            },
        }
    )
    try:
        rss_before = _rss_kb(server)

        async def drive() -> tuple[list[httpx.Response], int]:
            deepest = 0
            stop = asyncio.Event()

            async def watch(client: httpx.AsyncClient) -> None:
                nonlocal deepest
                while not stop.is_set():
                    ready = (await client.get(server.base + "/readyz")).json()
                    deepest = max(deepest, ready["models"]["slow"]["queue"]["waiting"])
                    await asyncio.sleep(0.05)

            async def one(client: httpx.AsyncClient) -> httpx.Response:
                return await client.post(
                    server.base + "/v1/chat/completions", json={"model": "slow", **PLAIN}
                )

            async with httpx.AsyncClient(timeout=60) as client:
                watcher = asyncio.create_task(watch(client))
                responses: list[httpx.Response] = []
                for _ in range(6):  # six waves of 36: bounded in count and time
                    responses += await asyncio.gather(*(one(client) for _ in range(36)))
                stop.set()
                await watcher
            return responses, deepest

        responses, deepest = asyncio.run(drive())
        statuses = {r.status_code for r in responses}
        assert statuses <= {200, 429, 503}, statuses
        assert 200 in statuses and statuses & {429, 503}
        for shed in (r for r in responses if r.status_code != 200):
            assert float(shed.headers["retry-after"]) > 0
        assert deepest <= 8
        after = httpx.get(server.base + "/readyz").json()["models"]["slow"]["queue"]
        assert after["waiting"] == 0
        assert _ask(server, "slow").status_code == 200
        assert _rss_kb(server) - rss_before < 50_000  # flat: no per-request leak
    finally:
        server.stop()


def _rss_kb(server: Server) -> int:
    status = Path(f"/proc/{server.proc.pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1])


@pytest.mark.slow
def test_sigterm_with_200_requests_in_flight_completes_them_all(upstream: Server) -> None:
    """160 upstream and 40 local calls (the local model answers one at a time), half of each
    streamed, in flight at SIGTERM: all complete with their whole answer, then the process
    exits."""
    server = shipway_server(
        {
            "server": {"drain_timeout_s": 300},
            "queue": {"max_waiting": 256, "timeout_s": 300, "max_timeout_s": 300},
            "models": {
                "remote": {
                    "backend": "openai",
                    "base_url": upstream.base + "/v1",
                    "upstream_model": "slow-1",
                    "max_concurrency": 128,
                },
            },
        }
    )

    async def drive() -> list[tuple[int, str]]:
        async def one(client: httpx.AsyncClient, model: str, stream: bool) -> tuple[int, str]:
            body = {"model": model, "stream": stream, **PLAIN, "max_tokens": 2}
            response = await client.post(server.base + "/v1/chat/completions", json=body)
            return response.status_code, response.text

        limits = httpx.Limits(max_connections=300)
        async with httpx.AsyncClient(timeout=330, limits=limits) as client:
            calls = [
                asyncio.create_task(one(client, model, i % 2 == 0))
                for model, count in (("remote", 160), (CHAT, 40))
                for i in range(count)
            ]
            for _ in range(200):  # until the server holds them all
                await asyncio.sleep(0.05)
                ready = (await client.get(server.base + "/readyz")).json()["models"]
                if ready[CHAT]["queue"]["waiting"] >= 30:
                    break
            os.kill(server.proc.pid, signal.SIGTERM)
            return await asyncio.gather(*calls)

    try:
        results = asyncio.run(drive())
        assert [status for status, _ in results] == [200] * 200
        for _, text in results:
            assert '"choices"' in text
            if text.startswith("data:"):
                assert text.rstrip().endswith("[DONE]")
        # uvicorn re-raises SIGTERM once it has drained: exit 0 or "killed by SIGTERM".
        assert server.proc.wait(timeout=60) in (0, -signal.SIGTERM)
    finally:
        server.stop()
