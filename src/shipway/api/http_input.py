"""Reading what a client sent: the JSON body, the call options in headers, disconnects."""

from __future__ import annotations

import asyncio
import contextlib
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
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip()
    if content_type and content_type not in ("application/json", "text/plain", "*/*"):
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
    """Run ``work``; if the client disconnects first, cancel it and raise ``ClientGone``."""
    task = asyncio.ensure_future(work)

    async def wait_for_disconnect() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(wait_for_disconnect())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    raise ClientGone
