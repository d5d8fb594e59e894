"""Background health checks of upstreams: a cheap ``GET {base_url}/models`` per interval.

An upstream is taken out of rotation after `unhealthy_after` failed probes in a row and put
back after `healthy_after` good ones; ``on_change`` reports each flip. Upstreams start
healthy, so traffic flows from the first request and a dead one is found within
`unhealthy_after` probes.

What counts: no answer, a timeout or a 5xx is a failure. Any answer below 500 is healthy: the
server is up and speaking HTTP. A 401/403 (a key without permission to list models, as
OpenAI's restricted keys have) or a 404 (a server without `/models`) does not mean chat
requests fail; those are shown as a warning in the snapshot, and real auth failures reach the
circuit breaker through real traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import aiohttp
import structlog

from shipway.config_resilience import HealthCheckSettings

__all__ = ["HealthChecker", "HealthTarget"]

_MAX_BODY = 1024 * 1024  # read (for keep-alive) at most this much of a probe's answer


class HealthTarget(NamedTuple):
    base_url: str  # as in the model's settings, e.g. "http://127.0.0.1:8000/v1"
    settings: HealthCheckSettings
    headers: Mapping[str, str]  # e.g. the upstream's Authorization


@dataclass
class _Status:
    healthy: bool = True
    failures: int = 0  # in a row
    successes: int = 0  # in a row
    since: float = 0.0
    last_probe_at: float | None = None
    last_status: int | None = None
    last_error: str | None = None
    warning: str | None = None


class HealthChecker:
    def __init__(
        self,
        models: Mapping[str, HealthTarget],
        on_change: Callable[[str, bool], None],
        clock: Callable[[], float],
    ) -> None:
        """``models``: the upstreams to probe (those with checks disabled are skipped);
        ``on_change(alias, healthy)`` on every flip, which must not raise."""
        self._targets = {a: t for a, t in models.items() if t.settings.enabled}
        self._on_change = on_change
        self._clock = clock
        now = clock()
        self._status = {alias: _Status(since=now) for alias in self._targets}
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._log = structlog.get_logger("shipway.health")

    def healthy(self, alias: str) -> bool:
        """False only for a probed upstream that is out of rotation."""
        status = self._status.get(alias)
        return status is None or status.healthy

    def snapshot(self) -> dict[str, dict[str, Any]]:
        now = self._clock()
        return {
            alias: {
                "healthy": s.healthy,
                "state_for_s": round(now - s.since, 3),
                "consecutive_failures": s.failures,
                "last_probe_ago_s": None
                if s.last_probe_at is None
                else round(now - s.last_probe_at, 3),
                "last_status": s.last_status,
                "last_error": s.last_error,
                "warning": s.warning,
            }
            for alias, s in self._status.items()
        }

    async def start(self) -> None:
        if not self._targets or self._session is not None:
            return
        self._session = aiohttp.ClientSession()
        self._tasks = [
            asyncio.create_task(self._run(alias, target), name=f"health-check:{alias}")
            for alias, target in self._targets.items()
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _run(self, alias: str, target: HealthTarget) -> None:
        while True:
            status, error = await self._probe(target)
            try:
                self._record(alias, target.settings, status, error)
            except Exception:  # noqa: BLE001 - a failing on_change must not stop the checks for good
                self._log.exception("health_check_on_change_failed", model=alias)
            await asyncio.sleep(target.settings.interval_s)

    async def _probe(self, target: HealthTarget) -> tuple[int | None, str | None]:
        """The answer's status, or None and why there was none."""
        assert self._session is not None
        url = f"{target.base_url.rstrip('/')}/models"
        timeout = target.settings.timeout_s
        try:
            async with asyncio.timeout(timeout):
                async with self._session.get(url, headers=target.headers) as response:
                    read = 0
                    async for part in response.content.iter_chunked(64 * 1024):
                        read += len(part)
                        if read > _MAX_BODY:
                            break
                    return response.status, None
        except TimeoutError:  # before OSError: TimeoutError is one
            return None, f"GET {url} took over {timeout:g}s"
        except (aiohttp.ClientError, OSError) as exc:
            return None, f"GET {url} failed: {exc!r}"

    def _record(
        self, alias: str, settings: HealthCheckSettings, code: int | None, error: str | None
    ) -> None:
        s = self._status[alias]
        now = self._clock()
        s.last_probe_at = now
        s.last_status = code
        ok = code is not None and code < 500
        s.last_error = error if code is None else None if ok else f"answered {code}"
        s.warning = (
            f"GET /models answered {code}: the upstream is up, but check its base_url and key"
            if code in (401, 403, 404)
            else None
        )
        if ok:
            s.failures, s.successes = 0, s.successes + 1
            flip = not s.healthy and s.successes >= settings.healthy_after
        else:
            s.failures, s.successes = s.failures + 1, 0
            flip = s.healthy and s.failures >= settings.unhealthy_after
        if flip:
            s.healthy = not s.healthy
            s.since = now
            self._on_change(alias, s.healthy)
