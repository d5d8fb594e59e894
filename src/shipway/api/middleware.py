"""Pure ASGI middleware: request ids, the body-size limit, and the access log."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shipway.api.errors import error_response
from shipway.errors import PayloadTooLarge, ShipwayError

__all__ = ["BodyLimitMiddleware", "RequestContextMiddleware"]

_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestContextMiddleware:
    """Give every request an id (the client's ``x-request-id`` if sane), echo it, log once."""

    def __init__(self, app: ASGIApp, *, access_log: bool) -> None:
        self.app = app
        self.access_log = access_log
        self.log = structlog.get_logger("shipway.access")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = _header(scope, b"x-request-id")
        request_id = incoming if incoming and _CLIENT_ID.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            # Any log line written while serving this request carries its id.
            with structlog.contextvars.bound_contextvars(request_id=request_id):
                await self.app(scope, receive, send_with_id)
        except Exception as exc:
            self.log.error(
                "unhandled error", request_id=request_id, path=scope["path"], exc_info=exc
            )
            if not response_started:
                internal = ShipwayError(
                    f"internal error in Shipway (request {request_id}); see the server log",
                    code="internal_error",
                )
                await error_response(internal)(scope, receive, send_with_id)
        finally:
            if self.access_log:
                call = scope["state"].get("call")
                extra: dict[str, Any] = {}
                if call is not None:
                    extra = {
                        "model": call.model,
                        "prompt_tokens": call.prompt_tokens,
                        "completion_tokens": call.completion_tokens,
                        "call_status": call.status,
                        **call.timings_ms(),
                    }
                self.log.info(
                    "request",
                    request_id=request_id,
                    method=scope["method"],
                    path=scope["path"],
                    status=status,
                    duration_ms=round((time.perf_counter() - started) * 1000, 2),
                    **extra,
                )


class BodyLimitMiddleware:
    """Refuse bodies over ``max_bytes`` with 413, by header or while reading a chunked body."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        too_large = PayloadTooLarge(
            f"the request body is larger than the {self.max_bytes}-byte limit "
            "(server.max_body_bytes)"
        )
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await error_response(too_large)(scope, receive, send)
            return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise too_large
            return message

        await self.app(scope, counting_receive, send)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None
