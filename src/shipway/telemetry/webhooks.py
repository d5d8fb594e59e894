"""Alert notifications POSTed to webhooks: one sender task and queue per receiver.

``notify`` only puts the event on each receiver's queue (never awaits, never on the request
path); the sender posts it with a timeout and bounded retries, in order, so a receiver sees
an incident's `firing` before its `resolved`. A URL (Slack's carries its token) is never
logged: log lines name the webhook, and an exception's text, which may hold the URL, is
reduced to its type.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

import aiohttp
import orjson
import structlog

from shipway.config import WebhookSettings
from shipway.errors import ConfigError

__all__ = ["AlertEvent", "Notifier", "WebhookNotifier", "json_payload", "slack_payload"]

_SEVERITIES = ("info", "warning", "critical")
_QUEUE_SIZE = 256


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """One transition: `since` is when the incident started firing, `at` this transition."""

    status: Literal["firing", "resolved"]
    rule: str
    kind: str
    severity: str
    model: str | None
    summary: str
    value: float
    threshold: float
    since: float
    at: float
    team: str | None = None  # per-team rules only (cost_anomaly)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.team is None:  # the payload of a rule without teams stays as it was
            del out["team"]
            return {**out, "fingerprint": f"{self.rule}/{self.model or '*'}"}
        return {**out, "fingerprint": f"{self.rule}/{self.team}/{self.model or '*'}"}


class Notifier(Protocol):
    async def start(self) -> None: ...
    def notify(self, event: AlertEvent) -> None: ...
    async def stop(self) -> None: ...


def json_payload(event: AlertEvent, instance: str) -> dict[str, Any]:
    return {"source": "shipway", "instance": instance, **event.to_dict()}


def slack_payload(event: AlertEvent, instance: str) -> dict[str, Any]:
    head = f"[{event.status.upper()}] {event.rule}"
    where = f" · team {event.team}" if event.team else ""
    where += f" · model {event.model}" if event.model else ""
    text = f"{head} ({event.severity}{where}, {instance}): {event.summary}"
    detail = f"*{_esc(head)}* · {event.severity}{_esc(where)} · {_esc(instance)}\n"
    block = {"type": "section", "text": {"type": "mrkdwn", "text": detail + _esc(event.summary)}}
    return {"text": _esc(text), "blocks": [block]}


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


@dataclass(slots=True)
class _Target:
    settings: WebhookSettings
    url: str
    headers: dict[str, str]
    queue: asyncio.Queue[AlertEvent] = field(default_factory=lambda: asyncio.Queue(_QUEUE_SIZE))


class WebhookNotifier:
    """Delivers to every configured webhook; secrets are read from ``secrets`` at build."""

    def __init__(
        self,
        webhooks: Sequence[WebhookSettings],
        secrets: Mapping[str, str],
        instance: str | None = None,
    ) -> None:
        self._targets = [_target(hook, secrets) for hook in webhooks]
        self._instance = instance or socket.gethostname()
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._log = structlog.get_logger("shipway.alerts")

    async def start(self) -> None:
        if self._targets:
            self._session = aiohttp.ClientSession(headers={"User-Agent": "shipway-alerts"})
            self._tasks = [
                asyncio.create_task(self._send_loop(t), name=f"alert-webhook:{t.settings.name}")
                for t in self._targets
            ]

    def notify(self, event: AlertEvent) -> None:
        for target in self._targets:
            if _SEVERITIES.index(event.severity) < _SEVERITIES.index(target.settings.min_severity):
                continue
            try:
                target.queue.put_nowait(event)
            except asyncio.QueueFull:
                self._log.error(
                    "alert webhook backlog full: notification dropped",
                    webhook=target.settings.name,
                    rule=event.rule,
                    status=event.status,
                )

    async def stop(self, grace_s: float = 2.0) -> None:
        """Let queued notifications go out for up to ``grace_s``, then stop."""
        if self._tasks:
            waiting = asyncio.gather(*(t.queue.join() for t in self._targets))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiting, grace_s)
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def _send_loop(self, target: _Target) -> None:
        while True:
            event = await target.queue.get()
            try:
                await self._deliver(target, event)
            finally:
                target.queue.task_done()

    async def _deliver(self, target: _Target, event: AlertEvent) -> bool:
        assert self._session is not None
        hook = target.settings
        render = slack_payload if hook.format == "slack" else json_payload
        body = orjson.dumps(render(event, self._instance))
        headers = {"Content-Type": "application/json", **target.headers}
        timeout = aiohttp.ClientTimeout(total=hook.timeout_s)
        log = self._log.bind(webhook=hook.name, rule=event.rule, status=event.status)
        for attempt in range(hook.retries + 1):
            if attempt:
                await asyncio.sleep(min(0.5 * 2 ** (attempt - 1), 30.0))
            try:
                async with self._session.post(
                    target.url, data=body, headers=headers, timeout=timeout
                ) as response:
                    await response.read()
                    code = response.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = type(exc).__name__  # its text may hold the URL: never logged
            else:
                if code < 300:
                    log.info("alert notification sent", attempts=attempt + 1)
                    return True
                problem = f"HTTP {code}"
                if code < 500 and code not in (408, 429):
                    log.error("alert notification refused by the receiver", problem=problem)
                    return False
            log.warning("alert notification failed", attempt=attempt + 1, problem=problem)
        log.error("alert notification dropped after retries", attempts=hook.retries + 1)
        return False


def _target(hook: WebhookSettings, secrets: Mapping[str, str]) -> _Target:
    url = hook.url
    if hook.url_env is not None:
        url = secrets.get(hook.url_env, "").strip()
        where = f"alerts.webhooks {hook.name!r}: environment variable {hook.url_env}"
        if not url:
            raise ConfigError(f"{where} is not set; export it with the webhook's URL")
        if urlsplit(url).scheme not in ("http", "https"):
            raise ConfigError(f"{where} must hold an http:// or https:// URL")
    assert url is not None  # the settings require `url` or `url_env`
    headers: dict[str, str] = {}
    raw = secrets.get(hook.headers_env, "") if hook.headers_env else ""
    for item in filter(None, (part.strip() for part in raw.split(","))):
        name, _, value = item.partition("=")
        headers[name.strip()] = value.strip()
    return _Target(hook, url, headers)
