"""chaos_report: /metrics counters read before and after, and the report built from them.

The counters are real prometheus_client ones, served over real HTTP by an aiohttp server.
"""

from __future__ import annotations

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry, Counter, generate_latest

from shipway.ops.chaos_report import scrape, summarize
from shipway.ops.chaos_run import Outcome


async def test_counters_are_the_difference_and_missing_ones_are_na() -> None:
    registry = CollectorRegistry()
    retries = Counter("shipway_retries", "", ["model", "reason"], registry=registry)
    fallbacks = Counter(
        "shipway_fallbacks", "", ["from_model", "to_model", "reason"], registry=registry
    )
    retries.labels("up", "status_500").inc(5)  # before the run: must not count

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    async with TestServer(app) as server, aiohttp.ClientSession() as session:
        url = str(server.make_url("")).rstrip("/")
        before = await scrape(session, url, {})
        retries.labels("up", "status_500").inc(3)
        retries.labels("up", "reset").inc(1)
        fallbacks.labels("up", "local", "breaker_open").inc(2)
        after = await scrape(session, url, {})
    outcomes = [
        Outcome(True, False, 0.010, 200, None, "up", "up"),
        Outcome(True, True, 0.030, 200, None, "local", "up", degraded=False),
        Outcome(False, False, 0.020, 503, "service_unavailable"),
        Outcome(False, False, 0.040, None, "ServerDisconnectedError"),
    ]
    report = summarize(url, "up", 5, outcomes, before.delta(after), 1.0)
    assert report["retries"] == {
        "total": 4,
        "by": [
            {"model": "up", "reason": "status_500", "count": 3},
            {"model": "up", "reason": "reset", "count": 1},
        ],
        "per_request": 1.0,
    }
    by = [{"from_model": "up", "to_model": "local", "reason": "breaker_open", "count": 2}]
    assert report["fallbacks"] == {"total": 2, "by": by}
    assert report["breaker_transitions"] is None  # this server has no such counter
    assert (report["planned"], report["sent"], report["streamed"]) == (5, 4, 1)
    assert report["success_rate"] == 0.5
    assert {(e["status"], e["code"]) for e in report["errors"]} == {
        (503, "service_unavailable"),
        (None, "ServerDisconnectedError"),
    }
    assert report["latency_ms"]["max"] == 40.0
    assert report["latency_ms"]["p50"] == 25.0
    assert len(report["served_by"]) == 2


async def test_an_unreadable_metrics_page_is_a_note_not_zeros() -> None:
    app = web.Application()
    async with TestServer(app) as server, aiohttp.ClientSession() as session:
        url = str(server.make_url("")).rstrip("/")
        before = await scrape(session, url, {})
    report = summarize(url, "up", 0, [], before.delta(before), 0.0)
    assert report["metrics"] == "/metrics answered 404"
    assert report["retries"] is None and report["success_rate"] is None
    assert report["latency_ms"] is None
