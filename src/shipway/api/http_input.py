"""Reading what a client sent: the JSON body, the call options in headers, disconnects."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

import orjson
from starlette.requests import Request

from shipway.engine.admission import Priority
from shipway.errors import InvalidRequest, UnsupportedMediaType

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


async def read_json(request: Request) -> Any:
    # Lenient on purpose: `curl -d '{...}'` sends a form content type with a JSON body. Only
    # multipart bodies (a file upload to the wrong endpoint) cannot be JSON.
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/"):
        raise UnsupportedMediaType(
            f"the body must be JSON (Content-Type: application/json), not {content_type!r}"
        )
    raw = await request.body()
    if not raw.strip():
        raise InvalidRequest("the request body is empty; send a JSON object")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(
            f"the request body is not valid UTF-8 (bad byte at offset {exc.start})"
        ) from None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(
            f"We could not parse the JSON body of your request: {exc.msg} at line {exc.lineno} "
            f"column {exc.colno}. Send valid JSON with Content-Type: application/json."
        ) from None


def requested_priority(request: Request) -> Priority:
    raw = request.headers.get("x-shipway-priority")
    if raw is None:
        return Priority.NORMAL
    try:
        return _PRIORITIES[raw.strip().lower()]
    except KeyError:
        raise InvalidRequest(
            f"x-shipway-priority must be high, normal or low, not {raw!r}",
            param="x-shipway-priority",
        ) from None


def requested_timeout(request: Request, body_timeout: float | None) -> float | None:
    if body_timeout is not None:
        return body_timeout
    raw = request.headers.get("x-shipway-timeout")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0 or value != value or value == float("inf"):
        raise InvalidRequest(
            f"x-shipway-timeout must be a positive number of seconds, not {raw!r}",
            param="x-shipway-timeout",
        )
    return value


async def unless_disconnected(request: Request, work: Awaitable[_T]) -> _T:
    """Await ``work`` here; if the client disconnects first, cancel it and raise ``ClientGone``.

    One watcher task per request reads the ASGI channel, which after the body only ever
    says ``http.disconnect``; the work itself stays in the request's task.
    """
    task = asyncio.current_task()
    assert task is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        while (await request.receive())["type"] != "http.disconnect":
            pass
        gone = True
        task.cancel()

    watcher = asyncio.create_task(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if gone:
            task.uncancel()
            raise ClientGone from None
        raise
    finally:
        watcher.cancel()
