"""Webhook delivery against an in-process aiohttp receiver: payloads, retries, secrecy."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from shipway.config import WebhookSettings
from shipway.errors import ConfigError
from shipway.telemetry.webhooks import AlertEvent, WebhookNotifier

EVENT = AlertEvent(
    status="firing",
    rule="errors",
    kind="error_rate",
    severity="critical",
    model="<up>",
    summary="error rate of <up> is 80.0%",
    value=0.8,
    threshold=0.05,
    since=1_700_000_000.0,
    at=1_700_000_000.0,
)


class Receiver:
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, str], Any]] = []
        self.answers: list[int] = []  # statuses to answer, in order; then 200

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append((request.path, dict(request.headers), await request.json()))
        return web.Response(status=self.answers.pop(0) if self.answers else 200)


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/{tail:.*}", rec.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield rec, f"http://127.0.0.1:{port}"
    await runner.cleanup()


def hook(**fields: Any) -> WebhookSettings:
    return WebhookSettings.model_validate({"name": "h", **fields})


async def deliver(notifier: WebhookNotifier, *events: AlertEvent) -> None:
    await notifier.start()
    for event in events:
        notifier.notify(event)
    await notifier.stop(grace_s=10)


async def test_generic_json_and_slack_payloads(receiver: tuple[Receiver, str]) -> None:
    rec, base = receiver
    secret = base + "/services/T0/B0/s3cr3t-token"
    hooks = [hook(name="ops", url=base + "/json"), hook(name="chat", format="slack", url_env="S")]
    resolved = AlertEvent(**_fields(EVENT, status="resolved"))
    with capture_logs() as logs:
        await deliver(WebhookNotifier(hooks, {"S": secret}, instance="node-1"), EVENT, resolved)
    by_path = {path: [body for p, _, body in rec.seen if p == path] for path, _, _ in rec.seen}
    firing_json, resolved_json = by_path["/json"]
    assert firing_json == {
        "source": "shipway",
        "instance": "node-1",
        "status": "firing",
        "rule": "errors",
        "kind": "error_rate",
        "severity": "critical",
        "model": "<up>",
        "summary": "error rate of <up> is 80.0%",
        "value": 0.8,
        "threshold": 0.05,
        "since": 1_700_000_000.0,
        "at": 1_700_000_000.0,
        "fingerprint": "errors/<up>",
    }
    assert resolved_json["status"] == "resolved"
    firing_slack, resolved_slack = by_path["/services/T0/B0/s3cr3t-token"]
    assert firing_slack["text"].startswith("[FIRING] errors (critical · model &lt;up&gt;")
    [block] = firing_slack["blocks"]
    assert block["type"] == "section" and block["text"]["type"] == "mrkdwn"
    assert "*[FIRING] errors*" in block["text"]["text"] and "&lt;up&gt;" in block["text"]["text"]
    assert resolved_slack["text"].startswith("[RESOLVED] errors")
    assert len(rec.seen) == 4
    assert all(entry["webhook"] in ("ops", "chat") for entry in logs)
    assert "s3cr3t" not in repr(logs)


def _fields(event: AlertEvent, **changes: Any) -> dict[str, Any]:
    return {name: getattr(event, name) for name in event.__slots__} | changes  # type: ignore[attr-defined]


async def test_retries_server_errors_but_not_client_errors(
    receiver: tuple[Receiver, str],
) -> None:
    rec, base = receiver
    rec.answers = [503, 500]
    with capture_logs() as logs:
        await deliver(WebhookNotifier([hook(url=base + "/a", retries=3)], {}), EVENT)
    assert len(rec.seen) == 3  # two failures, then delivered
    assert [e["event"] for e in logs] == ["alert notification failed"] * 2 + [
        "alert notification sent"
    ]
    rec.seen.clear()
    rec.answers = [400]
    with capture_logs() as logs:
        await deliver(WebhookNotifier([hook(url=base + "/a", retries=3)], {}), EVENT)
    assert len(rec.seen) == 1
    assert logs[-1]["event"] == "alert notification refused by the receiver"


async def test_an_unreachable_receiver_gives_up_after_its_retries_without_the_url() -> None:
    from tests.support.servers import free_port

    url = f"http://127.0.0.1:{free_port()}/hook-path-secret"
    with capture_logs() as logs:
        await deliver(WebhookNotifier([hook(url=url, retries=1, timeout_s=1)], {}), EVENT)
    assert [e["event"] for e in logs] == [
        "alert notification failed",
        "alert notification failed",
        "alert notification dropped after retries",
    ]
    assert logs[0]["problem"] == "ClientConnectorError"
    assert "hook-path-secret" not in repr(logs)


async def test_min_severity_and_headers(receiver: tuple[Receiver, str]) -> None:
    rec, base = receiver
    hooks = [
        hook(name="pager", url=base + "/pager", min_severity="critical", headers_env="H"),
        hook(name="all", url=base + "/all"),
    ]
    warning = AlertEvent(**_fields(EVENT, severity="warning"))
    await deliver(WebhookNotifier(hooks, {"H": "Authorization=Bearer t0k, X-Team = ml"}), warning)
    assert [path for path, _, _ in rec.seen] == ["/all"]
    rec.seen.clear()
    await deliver(WebhookNotifier(hooks, {"H": "Authorization=Bearer t0k, X-Team = ml"}), EVENT)
    pager = next(headers for path, headers, _ in rec.seen if path == "/pager")
    assert pager["Authorization"] == "Bearer t0k" and pager["X-Team"] == "ml"


def test_a_missing_or_bad_url_variable_is_a_config_error_naming_it() -> None:
    slack = hook(format="slack", url_env="SLACK_WEBHOOK_URL")
    with pytest.raises(ConfigError, match="SLACK_WEBHOOK_URL is not set"):
        WebhookNotifier([slack], {})
    with pytest.raises(ConfigError, match="SLACK_WEBHOOK_URL must hold an http"):
        WebhookNotifier([slack], {"SLACK_WEBHOOK_URL": "hooks.slack.com/x"})


async def test_notify_never_waits_for_a_slow_receiver() -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(1)
        return web.Response()

    app = web.Application()
    app.router.add_post("/", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    notifier = WebhookNotifier([hook(url=f"http://127.0.0.1:{port}/", retries=0)], {})
    await notifier.start()
    loop = asyncio.get_running_loop()
    started = loop.time()
    for _ in range(100):
        notifier.notify(EVENT)
    assert loop.time() - started < 0.05
    await notifier.stop(grace_s=0.1)
    await runner.cleanup()
