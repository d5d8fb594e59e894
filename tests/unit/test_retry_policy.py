"""The retry policy: the budget over a clock the test moves, the backoff's bounds, and which
errors are retried or failed over (including the errors the real upstream backend raises
against a real HTTP server)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from shipway.backends.base import ChatRequest
from shipway.backends.openai_http import OpenAIHTTPBackend
from shipway.config import OpenAIUpstreamModel
from shipway.config_resilience import RetrySettings
from shipway.errors import (
    BreakerOpen,
    ClientClosedRequest,
    ConcurrencyLimited,
    ContextLengthExceeded,
    DeadlineExceeded,
    FirstTokenTimeout,
    InvalidRequest,
    ModelUnavailable,
    QueueFull,
    RateLimited,
    ShipwayError,
    Unauthorized,
    UpstreamError,
    UpstreamUnhealthy,
    WorkerCrashed,
)
from shipway.resilience.retry import (
    MAX_RETRY_AFTER_S,
    RetryBudget,
    counts_as_failure,
    fallback_reason,
    is_retryable,
)


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_the_budget_holds_over_a_long_run_of_failures() -> None:
    clock = Clock()
    settings = RetrySettings(budget_ratio=0.2, budget_window_s=10.0, budget_min_retries=3)
    budget = RetryBudget(settings, clock)
    requests = retries = 0
    for _ in range(5000):  # every attempt fails; each request retries as long as allowed
        budget.note_request()
        requests += 1
        for _ in range(settings.max_retries):
            if budget.try_spend():
                retries += 1
        clock.now += 0.01
    assert retries <= 0.2 * requests + 3 * (5000 * 0.01 / 10.0 + 1)
    assert retries >= 0.18 * requests  # and the budget is not needlessly stingy


def test_the_budget_refills_as_the_window_slides() -> None:
    clock = Clock()
    budget = RetryBudget(RetrySettings(budget_ratio=0.5, budget_min_retries=1), clock)
    for _ in range(4):
        budget.note_request()
    assert [budget.try_spend() for _ in range(4)] == [True, True, True, False]  # 4 * 0.5 + 1
    assert budget.snapshot() == {"window_requests": 4, "window_retries": 3}
    clock.now += 11.0
    assert budget.snapshot() == {"window_requests": 0, "window_retries": 0}
    assert budget.try_spend()  # the quiet model's allowance
    assert not budget.try_spend()


def test_backoff_is_full_jitter_within_the_doubling_cap() -> None:
    settings = RetrySettings(backoff_base_s=0.1, backoff_max_s=1.0)
    budget = RetryBudget(settings, Clock())
    rng = random.Random(7)
    for attempt, cap in [(0, 0.1), (1, 0.2), (2, 0.4), (3, 0.8), (4, 1.0), (20, 1.0)]:
        delays = [budget.backoff_s(attempt, None, rng) for _ in range(500)]
        assert all(0.0 <= d <= cap for d in delays)
        assert max(delays) > 0.9 * cap and min(delays) < 0.1 * cap  # spread over the range


def test_backoff_honours_retry_after_up_to_a_cap() -> None:
    budget = RetryBudget(RetrySettings(backoff_base_s=0.1, backoff_max_s=1.0), Clock())
    rng = random.Random(7)
    assert all(budget.backoff_s(0, 3.0, rng) == 3.0 for _ in range(50))
    assert budget.backoff_s(0, 600.0, rng) == MAX_RETRY_AFTER_S
    delays = [budget.backoff_s(3, 0.01, rng) for _ in range(200)]
    assert all(0.01 <= d <= 0.8 for d in delays)  # a short Retry-After is only a floor


def upstream(kind: str, **fields: object) -> UpstreamError:
    return UpstreamError("x", kind=kind, **fields)  # type: ignore[arg-type]


TOO_LONG_UPSTREAM = upstream("rejected", status=400, code="context_length_exceeded")

# error, retried on the same model, reason to fall back, counts against the breaker
TABLE: list[tuple[BaseException, bool, str | None, bool]] = [
    (upstream("unreachable"), True, "unreachable", True),
    (upstream("broken"), True, "broken", True),
    (upstream("rate_limited", status=429, retry_after=2.0), True, "rate_limited", True),
    (upstream("server_error"), True, "server_error", True),
    (upstream("timeout", status=504), True, "timeout", True),
    (WorkerCrashed("crashed", retry_after=1), True, "worker_crashed", True),
    (FirstTokenTimeout("stalled"), True, "timeout", True),
    (upstream("rejected", status=400), False, None, False),
    (TOO_LONG_UPSTREAM, False, "context_length", False),
    (upstream("auth_failed"), False, "auth_failed", True),
    (upstream("too_large"), False, "too_large", True),
    (upstream("bad_answer"), False, "bad_answer", True),
    (upstream("error_event"), False, "error_event", True),
    (ModelUnavailable("no worker"), False, "unavailable", True),
    (BreakerOpen("open", retry_after=3.0), False, "circuit_open", False),
    (UpstreamUnhealthy("down"), False, "unhealthy", False),
    (ConcurrencyLimited("full", retry_after=1.0), False, "overloaded", False),
    (QueueFull("full", retry_after=1.0), False, "queue_full", False),
    (ContextLengthExceeded("long"), False, "context_length", False),
    (DeadlineExceeded("late"), False, None, False),
    (ClientClosedRequest("gone"), False, None, False),
    (asyncio.CancelledError(), False, None, False),
    (InvalidRequest("bad"), False, None, False),
    (Unauthorized("who"), False, None, False),
    (RateLimited("slow down", kind="requests", retry_after=1.0), False, None, False),
    (ShipwayError("?"), False, None, False),
    (ValueError("bug"), False, None, False),
]


@pytest.mark.parametrize(("error", "retry", "fallback", "failure"), TABLE)
def test_classification(
    error: BaseException, retry: bool, fallback: str | None, failure: bool
) -> None:
    assert (is_retryable(error), fallback_reason(error), counts_as_failure(error)) == (
        retry,
        fallback,
        failure,
    )


# -- the errors the upstream backend really raises -------------------------------------------
@pytest.fixture
async def server() -> AsyncIterator[tuple[list[int], str]]:
    """An upstream answering each chat request with the next status of the list."""
    statuses: list[int] = []

    async def chat(request: web.Request) -> web.Response:
        status = statuses.pop(0)
        headers = {"Retry-After": "2"} if status == 429 else {}
        return web.json_response({"error": {"message": "no"}}, status=status, headers=headers)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield statuses, f"http://127.0.0.1:{port}/v1"
    await runner.cleanup()


async def backend_error(base_url: str) -> UpstreamError:
    settings = OpenAIUpstreamModel.model_validate({"backend": "openai", "base_url": base_url})
    backend = OpenAIHTTPBackend("m", settings, api_key="sk-test")
    await backend.start()
    try:
        with pytest.raises(UpstreamError) as caught:
            await backend.chat(ChatRequest(messages=[{"role": "user", "content": "hi"}]))
        return caught.value
    finally:
        await backend.close()


@pytest.mark.parametrize(
    ("status", "retry", "fallback"),
    [
        (500, True, "server_error"),
        (503, True, "server_error"),
        (429, True, "rate_limited"),
        (400, False, None),
        (404, False, None),
        (401, False, "auth_failed"),
    ],
)
async def test_classifies_what_the_backend_raises(
    server: tuple[list[int], str], status: int, retry: bool, fallback: str | None
) -> None:
    statuses, base_url = server
    statuses.append(status)
    error = await backend_error(base_url)
    assert (is_retryable(error), fallback_reason(error)) == (retry, fallback)
    if status == 429:
        assert error.retry_after == 2.0


async def test_an_unreachable_upstream_is_retried() -> None:
    error = await backend_error("http://127.0.0.1:9/v1")  # the discard port: nothing listens
    assert (is_retryable(error), fallback_reason(error)) == (True, "unreachable")
