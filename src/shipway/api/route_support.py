"""What every model route shares: the ``Call`` a request becomes, JSON and held-back streams.

A streamed answer is held back until its first chunk with content (or its end), so errors
found before generation — queue full, deadline, context length, an upstream's 4xx — still
get their status code instead of a broken stream; ``ClosingStream`` closes the pipeline's
stream (its slot) however the client leaves.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from shipway.api.http_input import requested_priority, requested_timeout
from shipway.errors import InvalidRequest
from shipway.pipeline import Call, carries_output
from shipway.security.principal import Principal

__all__ = [
    "CLIENT_CLOSED",
    "SSE_HEADERS",
    "ClosingStream",
    "describe_call",
    "hold_until_output",
    "json_response",
    "new_call",
    "principal_of",
    "wants_cost",
]

CLIENT_CLOSED = 499
_MAX_TAGS = 16
_TAG = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
# Proxies (nginx) must pass events on as they come rather than buffer the stream.
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status,
        media_type="application/json",
        headers=headers or None,
    )


def principal_of(request: Request) -> Principal:
    # Set by RouteAccess on every /v1 route; ANONYMOUS only when the server is open.
    principal: Principal = request.scope["state"]["principal"]
    return principal


def wants_cost(request: Request) -> bool:
    """``x-shipway-include-cost: true`` adds ``usage.cost`` (an extension OpenAI lacks)."""
    for key, value in request.scope["headers"]:
        if key == b"x-shipway-include-cost":
            return value.strip().lower() in (b"1", b"true", b"yes")
    return False


def new_call(
    request: Request,
    endpoint: str,
    model: str,
    body_timeout: float | None,
    raw: Any = None,
) -> Call:
    """The request's ``Call``, also put where the middleware reads it for the access log.

    ``raw``: the JSON body, for the attribution fields (``user``, ``metadata.tags``).
    """
    timeout, timeout_param = requested_timeout(request, body_timeout)
    call = Call(
        request_id=request.scope["state"]["request_id"],
        endpoint=endpoint,
        model=model,
        priority=requested_priority(request),
        requested_timeout_s=timeout,
        timeout_param=timeout_param,
        principal=principal_of(request),
        trace=request.scope["state"].get("trace"),
    )
    request.scope["state"]["call"] = call
    if isinstance(raw, dict):
        describe_call(call, request, raw)
    return call


def describe_call(call: Call, request: Request, raw: dict[str, Any]) -> None:
    """Who the answer is for (``user``), its tags, and whether the client skips the cache."""
    user = raw.get("user")
    if isinstance(user, str) and user:
        call.user = user[:256]
    tags: list[str] = []
    metadata = raw.get("metadata")
    if isinstance(metadata, dict) and "tags" in metadata:
        tags += _tags(metadata["tags"], "metadata.tags")
    for key, value in request.scope["headers"]:
        if key == b"x-shipway-tags":
            tags += _tags(value.decode("latin-1"), "x-shipway-tags")
        elif (key == b"x-shipway-cache" and value.strip().lower() == b"bypass") or (
            key == b"cache-control" and b"no-cache" in value.lower()
        ):
            call.cache = "bypass"
    if tags:
        unique = tuple(dict.fromkeys(tags))
        if len(unique) > _MAX_TAGS:
            raise InvalidRequest(
                f"at most {_MAX_TAGS} tags per request, got {len(unique)}", param="metadata.tags"
            )
        call.tags = unique


def _tags(value: Any, where: str) -> list[str]:
    """Tags as a comma-separated string (OpenAI's metadata values are strings) or a list."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise InvalidRequest(
            f"{where} must be a comma-separated string of tags", param="metadata.tags"
        )
    tags = [item.strip() for item in items if item.strip()]
    for tag in tags:
        if not _TAG.fullmatch(tag):
            raise InvalidRequest(
                f"tag {tag[:80]!r} in {where}: a tag is 1-64 letters, digits, or . _ : -",
                param="metadata.tags",
            )
    return tags


class ClosingStream(StreamingResponse):
    """Closes the pipeline's stream even if the client left before the body started.

    Starlette runs the body in a child task; cancelled before its first step, the body's own
    ``finally`` never runs, and the slot (a busy worker, an upstream connection) would wait
    for the garbage collector.
    """

    def __init__(
        self,
        content: AsyncGenerator[bytes, None],
        *,
        closes: AsyncGenerator[Any, None],
        **kwargs: Any,
    ) -> None:
        super().__init__(content, **kwargs)
        self._closes = closes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._closes.aclose()


async def hold_until_output(
    chunks: AsyncGenerator[dict[str, Any], None],
    carries: Callable[[dict[str, Any]], bool] = carries_output,
) -> list[dict[str, Any]]:
    """The stream's chunks up to and including the first one that ``carries`` output."""
    held: list[dict[str, Any]] = []
    async for chunk in chunks:
        held.append(chunk)
        if carries(chunk):
            break
    return held
