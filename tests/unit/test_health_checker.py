"""Health checks against a real aiohttp upstream that the test makes fail and recover."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from shipway.config_resilience import HealthCheckSettings
from shipway.resilience.health import HealthChecker, HealthTarget

FAST = HealthCheckSettings(interval_s=0.02, timeout_s=0.2, unhealthy_after=3, healthy_after=2)


@dataclass
class Upstream:
    status: int = 200
    delay_s: float = 0.0
    seen: list[str] = field(default_factory=list)  # the Authorization header of each probe
    arrivals: asyncio.Queue[None] = field(default_factory=asyncio.Queue)
    url: str = ""

    async def models(self, request: web.Request) -> web.Response:
        self.seen.append(request.headers.get("Authorization", ""))
        self.arrivals.put_nowait(None)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return web.json_response({"object": "list", "data": []}, status=self.status)


async def serve(upstream: Upstream, port: int = 0) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app.router.add_get("/v1/models", upstream.models)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, reuse_address=True)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream()
    runner, port = await serve(up)
    up.url = f"http://127.0.0.1:{port}/v1"
    yield up
    await runner.cleanup()


class Changes:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[str, bool]] = asyncio.Queue()

    def __call__(self, alias: str, healthy: bool) -> None:
        self.queue.put_nowait((alias, healthy))

    async def next(self) -> tuple[str, bool]:
        return await asyncio.wait_for(self.queue.get(), 10)  # a guard against hanging only


@pytest.fixture
async def checked(upstream: Upstream) -> AsyncIterator[tuple[HealthChecker, Changes]]:
    changes = Changes()
    target = HealthTarget(upstream.url, FAST, {"Authorization": "Bearer sk-probe"})
    checker = HealthChecker({"up": target}, changes, time.monotonic)
    await checker.start()
    yield checker, changes
    await checker.stop()


async def probes(upstream: Upstream, count: int) -> None:
    """Until the upstream has seen ``count`` more probes."""
    while not upstream.arrivals.empty():
        upstream.arrivals.get_nowait()
    async with asyncio.timeout(10):  # a guard against hanging only
        for _ in range(count):
            await upstream.arrivals.get()


async def test_unhealthy_after_failures_and_back_after_recovery(
    upstream: Upstream, checked: tuple[HealthChecker, Changes]
) -> None:
    checker, changes = checked
    await probes(upstream, 2)
    assert checker.healthy("up")
    assert upstream.seen[0] == "Bearer sk-probe"
    upstream.status = 500
    seen_before = len(upstream.seen)
    assert await changes.next() == ("up", False)
    assert len(upstream.seen) - seen_before >= FAST.unhealthy_after
    assert not checker.healthy("up")
    snapshot = checker.snapshot()["up"]
    assert snapshot["healthy"] is False
    assert snapshot["last_error"] == "answered 500"
    upstream.status = 200
    assert await changes.next() == ("up", True)
    assert checker.healthy("up")
    assert checker.snapshot()["up"]["consecutive_failures"] == 0


async def test_timeouts_count_as_failures(
    upstream: Upstream, checked: tuple[HealthChecker, Changes]
) -> None:
    checker, changes = checked
    upstream.delay_s = 1.0  # far past timeout_s
    assert await changes.next() == ("up", False)
    assert "took over 0.2s" in checker.snapshot()["up"]["last_error"]
    upstream.delay_s = 0.0
    assert await changes.next() == ("up", True)


async def test_a_stopped_server_is_unhealthy_until_it_listens_again() -> None:
    upstream = Upstream()
    runner, port = await serve(upstream)
    changes = Changes()
    target = HealthTarget(f"http://127.0.0.1:{port}/v1", FAST, {})
    checker = HealthChecker({"up": target}, changes, time.monotonic)
    await checker.start()
    try:
        await probes(upstream, 1)
        await runner.cleanup()  # connections refused from now on
        assert await changes.next() == ("up", False)
        assert "failed" in checker.snapshot()["up"]["last_error"]
        runner, _ = await serve(upstream, port)
        assert await changes.next() == ("up", True)
    finally:
        await checker.stop()
        await runner.cleanup()


async def test_answers_below_500_are_healthy_with_a_warning(
    upstream: Upstream, checked: tuple[HealthChecker, Changes]
) -> None:
    checker, changes = checked
    upstream.status = 403
    await probes(upstream, FAST.unhealthy_after + 2)
    assert checker.healthy("up")
    assert changes.queue.empty()
    assert "403" in checker.snapshot()["up"]["warning"]


async def test_unprobed_models_are_healthy_and_stop_ends_the_probes(upstream: Upstream) -> None:
    off = HealthCheckSettings(enabled=False)
    checker = HealthChecker(
        {"up": HealthTarget(upstream.url, FAST, {}), "off": HealthTarget(upstream.url, off, {})},
        Changes(),
        time.monotonic,
    )
    await checker.start()
    await probes(upstream, 2)
    await checker.stop()
    assert checker.healthy("off") and checker.healthy("local-model")
    assert set(checker.snapshot()) == {"up"}
    count = len(upstream.seen)
    await asyncio.sleep(0.1)
    assert len(upstream.seen) == count
