"""Reading what a client sent: the JSON body, the call options in headers, disconnects."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable
from typing import Any, TypeVar

import orjson
from starlette.requests import ClientDisconnect, Request

from shipway.engine.admission import Priority
from shipway.errors import ClientClosedRequest, InvalidRequest, RequestTimeout, UnsupportedMediaType

__all__ = [
    "ClientGone",
    "read_json",
    "requested_priority",
    "requested_timeout",
    "unless_disconnected",
]

_T = TypeVar("_T")
_PRIORITIES = {"high": Priority.HIGH, "normal": Priority.NORMAL, "low": Priority.LOW}


class ClientGone(Exception):
    """The client closed the connection before the answer was ready."""


def _header(request: Request, name: bytes) -> str | None:
    """One header, read straight from the ASGI scope.

    Starlette's ``Headers.get`` raises and catches a KeyError for every absent header, which
    measured tens of microseconds per request inside the server's deep await stack.
    """
    for key, value in request.scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def read_json(request: Request) -> Any:
    # Lenient on purpose: `curl -d '{...}'` sends a form content type with a JSON body. Only
    # multipart bodies (a file upload to the wrong endpoint) cannot be JSON.
    content_type = _header(request, b"content-type") or ""
    if content_type.startswith("multipart/"):
        raise UnsupportedMediaType(
            f"the body must be JSON (Content-Type: application/json), not {content_type!r}"
        )
    try:
        raw = await request.body()
    except ClientDisconnect:
        if request.scope["state"].get("shipway.body_timeout"):
            # The connection layer already answered 408 and closed (api/http_protocol.py).
            raise RequestTimeout("the request body did not arrive in time") from None
        raise ClientClosedRequest("the client closed the connection while sending") from None
    if not raw.strip():
        raise InvalidRequest("the request body is empty; send a JSON object")
    try:
        return orjson.loads(raw)  # orjson checks UTF-8 itself; explain only when it fails
    except orjson.JSONDecodeError as exc:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as bad:
            raise InvalidRequest(
                f"the request body is not valid UTF-8 (bad byte at offset {bad.start})"
            ) from None
        raise InvalidRequest(
            f"We could not parse the JSON body of your request: {exc.msg} at line {exc.lineno} "
            f"column {exc.colno}. Send valid JSON with Content-Type: application/json."
        ) from None


def requested_priority(request: Request) -> Priority:
    raw = _header(request, b"x-shipway-priority")
    if raw is None:
        return Priority.NORMAL
    try:
        return _PRIORITIES[raw.strip().lower()]
    except KeyError:
        raise InvalidRequest(
            f"x-shipway-priority must be high, normal or low, not {raw!r}",
            param="x-shipway-priority",
        ) from None


# Plain decimal seconds: Python's float() would also take "1_000", "nan", "1e400" and "inf".
_SECONDS = re.compile(r"^\s*(\d{1,9}(\.\d{0,9})?|\.\d{1,9})\s*$")


def requested_timeout(request: Request, body_timeout: float | None) -> tuple[float | None, str]:
    """The deadline the client asked for, and where it asked (the body field or the header)."""
    if body_timeout is not None:
        return body_timeout, "timeout"
    raw = _header(request, b"x-shipway-timeout")
    if raw is None:
        return None, "timeout"
    value = float(raw) if _SECONDS.match(raw) else 0.0
    if not value > 0:
        raise InvalidRequest(
            f"x-shipway-timeout must be a positive number of seconds such as 30 or 2.5, "
            f"not {raw[:64]!r}",
            param="x-shipway-timeout",
        )
    return value, "x-shipway-timeout"


# A request answered within this long never needs a disconnect watcher: most upstream and
# embedding calls finish sooner, and a task per request was measurable in the overhead.
_WATCH_AFTER_S = 0.05


async def unless_disconnected(request: Request, work: Awaitable[_T]) -> _T:
    """Await ``work`` here; if the client disconnects first, cancel it and raise ``ClientGone``.

    After ``_WATCH_AFTER_S`` a watcher task starts reading the ASGI channel, which after the
    body only ever says ``http.disconnect``; the work itself stays in the request's task.
    """
    task = asyncio.current_task()
    assert task is not None
    gone = False
    watcher: asyncio.Task[None] | None = None

    async def watch() -> None:
        nonlocal gone
        while (await request.receive())["type"] != "http.disconnect":
            pass
        gone = True
        task.cancel()

    def start_watching() -> None:
        nonlocal watcher
        watcher = asyncio.create_task(watch())

    timer = asyncio.get_running_loop().call_later(_WATCH_AFTER_S, start_watching)
    try:
        return await work
    except asyncio.CancelledError:
        if gone:
            task.uncancel()
            raise ClientGone from None
        raise
    finally:
        timer.cancel()
        if watcher is not None:
            watcher.cancel()
