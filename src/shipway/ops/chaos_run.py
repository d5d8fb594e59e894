"""``shipway chaos run``: bounded load at a running Shipway, one outcome per request.

Bounded twice: ``requests`` in all, and no new request after ``duration_limit_s`` (the ones
in flight then still finish, each within ``timeout_s``). A request succeeds when it gets a 200
and a whole answer: a parsed body, or a stream that ends with ``data: [DONE]`` and carries no
error event. chaos_report.py turns the outcomes (and /metrics before and after) into numbers.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from shipway.ops.chaos_report import Metrics, render, scrape, summarize
from shipway.ops.loopback import TargetRefused, check_target

__all__ = ["Outcome", "RunPlan", "drive", "run_chaos"]


@dataclass(frozen=True)
class RunPlan:
    url: str
    model: str
    requests: int
    concurrency: int
    stream_share: float = 0.0
    max_tokens: int = 8
    api_key: str | None = None
    timeout_s: float = 60.0
    duration_limit_s: float = 600.0

    def streamed(self, i: int) -> bool:
        # Spread evenly and exactly: request i streams when i*share crosses a whole number.
        return int((i + 1) * self.stream_share) > int(i * self.stream_share)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


@dataclass(frozen=True)
class Outcome:
    ok: bool
    streamed: bool
    latency_s: float
    status: int | None = None
    """None: no HTTP answer at all (refused, reset, timed out)."""
    code: str | None = None
    """Why it failed: the error body's code (or type), or what went wrong on the wire."""
    served_by: str | None = None
    model: str | None = None
    degraded: bool = False


def _error_code(raw: bytes) -> str | None:
    try:
        error = orjson.loads(raw).get("error") or {}
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return str(error.get("code") or error.get("type") or "") or None


async def _read_stream(response: aiohttp.ClientResponse) -> tuple[str | None, str | None]:
    """(model, problem) of an SSE answer; problem is None for a whole, clean stream."""
    model = None
    async for line in response.content:
        data = line.strip().removeprefix(b"data:").strip()
        if not line.startswith(b"data:") or not data:
            continue
        if data == b"[DONE]":
            return model, None
        event = orjson.loads(data)
        if "error" in event:
            return model, _error_code(data) or "stream_error"
        model = model or event.get("model")
    return model, "stream_truncated"


async def _one(session: aiohttp.ClientSession, plan: RunPlan, i: int) -> Outcome:
    stream = plan.streamed(i)
    body: dict[str, Any] = {
        "model": plan.model,
        "messages": [{"role": "user", "content": f"chaos run request {i}"}],
        "max_tokens": plan.max_tokens,
        "stream": stream,
    }
    start = time.perf_counter()
    status = served_by = None
    degraded = False
    try:
        async with session.post(
            plan.url + "/v1/chat/completions", data=orjson.dumps(body), headers=plan.headers
        ) as response:
            status = response.status
            served_by = response.headers.get("x-shipway-served-by")
            degraded = response.headers.get("x-shipway-degraded", "").lower() == "true"
            if status != 200:
                code = _error_code(await response.read())
                return Outcome(False, stream, time.perf_counter() - start, status, code)
            if stream:
                model, problem = await _read_stream(response)
            else:
                answer = orjson.loads(await response.read())
                model, problem = answer.get("model"), None if answer.get("choices") else "empty"
    except TimeoutError:
        problem, model = "client_timeout", None
    except (aiohttp.ClientError, orjson.JSONDecodeError) as exc:
        problem, model = type(exc).__name__, None
        if isinstance(exc, OSError) and exc.errno is not None:
            # ECONNRESET says more than the class name.
            problem += f" {errno.errorcode.get(exc.errno, exc.errno)}"
    latency = time.perf_counter() - start
    return Outcome(problem is None, stream, latency, status, problem, served_by, model, degraded)


async def drive(plan: RunPlan, on_done: Callable[[], None] = lambda: None) -> list[Outcome]:
    """Send the plan's requests, ``concurrency`` at a time; the outcomes in finishing order."""
    outcomes: list[Outcome] = []
    numbers = itertools.count()
    stop_at = time.monotonic() + plan.duration_limit_s
    connector = aiohttp.TCPConnector(limit=plan.concurrency)
    timeout = aiohttp.ClientTimeout(total=plan.timeout_s)

    async def worker(session: aiohttp.ClientSession) -> None:
        while (i := next(numbers)) < plan.requests and time.monotonic() < stop_at:
            outcomes.append(await _one(session, plan, i))
            on_done()

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(plan.concurrency)))
    return outcomes


async def _run(plan: RunPlan, on_done: Callable[[], None]) -> tuple[list[Outcome], Metrics, float]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        before = await scrape(session, plan.url, plan.headers)
        start = time.monotonic()
        outcomes = await drive(plan, on_done)
        elapsed = time.monotonic() - start
        try:
            after = await scrape(session, plan.url, plan.headers)
        except (aiohttp.ClientError, TimeoutError) as exc:
            after = Metrics(note=f"/metrics after the run: {exc!r}")
    return outcomes, before.delta(after), elapsed


def run_chaos(plan: RunPlan, *, allow_remote: bool, api_key_env: str | None, fmt: str) -> int:
    """Run the plan and print the report (``fmt`` table or json); the exit code: 0 once it
    ran (whatever the success rate); 1 if the server does not answer; 2 for bad arguments."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    err = Console(stderr=True, soft_wrap=True)
    try:
        url = check_target(plan.url, allow_remote=allow_remote)
    except TargetRefused as exc:
        err.print(f"chaos run: {exc}")
        return 2
    key = None
    if api_key_env is not None:
        key = os.environ.get(api_key_env)
        if not key:
            err.print(f"chaos run: the environment variable {api_key_env} is not set")
            return 2
    plan = RunPlan(**{**plan.__dict__, "url": url, "api_key": key})
    columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(f"chaos run {plan.model}", total=plan.requests)
        try:
            outcomes, metrics, elapsed = asyncio.run(_run(plan, lambda: bar.advance(task)))
        except (aiohttp.ClientError, TimeoutError) as exc:
            err.print(f"chaos run: cannot reach {plan.url}/metrics: {exc or type(exc).__name__}")
            return 1
    report = summarize(plan.url, plan.model, plan.requests, outcomes, metrics, elapsed)
    render(report, fmt)
    return 0
