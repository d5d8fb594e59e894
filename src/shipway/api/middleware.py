"""The one pure ASGI middleware in front of the routes.

It gives every request an id (the client's ``x-request-id`` if sane) and echoes it, refuses
bodies over the limit with 413 (by ``Content-Length``, or while reading a chunked body; a
path may have its own limit, as file uploads do),
counts every response by route and status (so requests refused before they reach a model
show in the metrics too), writes one access-log line and one audit record per request
(refused ones included: a 401 is what an audit wants to see), and turns any error that
escaped the routes into a logged 500 in the OpenAI envelope, so the server keeps serving.
One layer, not five: each layer costs a few microseconds on every request.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shipway.api.errors import error_response
from shipway.errors import PayloadTooLarge, ShipwayError
from shipway.security.audit import AuditLog
from shipway.telemetry.logging import AccessLog
from shipway.telemetry.metrics import Metrics
from shipway.telemetry.tracing import Tracing

__all__ = ["RequestMiddleware"]

_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")  # the audit log's column width
# Probes and scrapes, many a minute from machines: not requests anyone needs to account for.
# Read-only polls (probes, scrapes, an open dashboard every 2 s) would bury the audit log.
_UNAUDITED = frozenset({"/healthz", "/readyz", "/metrics", "/dashboard/api/summary"})


class RequestMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        access_log: AccessLog | None,
        max_body_bytes: int,
        metrics: Metrics,
        paths: frozenset[str],
        audit: AuditLog,
        tracing: Tracing,
        body_limits: Mapping[str, tuple[int, str]] | None = None,
    ) -> None:
        """``body_limits``: paths whose bodies may be larger (or must be smaller) than
        ``max_body_bytes``: the path's limit and the setting that sets it."""
        self.app = app
        self.audit = audit
        self.tracing = tracing
        self.access_log = access_log
        self.max_body_bytes = max_body_bytes
        self._default_limit = (max_body_bytes, "server.max_body_bytes")
        self._body_limits = dict(body_limits or {})
        self.log = structlog.get_logger("shipway.access")
        self._responses = metrics.http_responses
        self._paths = paths
        self._counters: dict[tuple[str, int], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = declared = traceparent = None
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                incoming = value.decode("latin-1")
            elif key == b"content-length":
                declared = value
            elif key == b"traceparent":
                traceparent = value
        request_id = incoming if incoming and _CLIENT_ID.match(incoming) else os.urandom(16).hex()
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        trace = self.tracing.begin(traceparent, scope["method"], scope["path"])
        state["trace"] = trace
        extra = [(b"x-request-id", request_id.encode())]
        if trace is not None:
            extra.append((b"traceparent", trace.traceparent().encode()))
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        limit = self._body_limits.get(scope["path"], self._default_limit)
        try:
            if declared is not None and declared.isdigit():
                if int(declared) > limit[0]:
                    await error_response(_too_large(limit))(scope, receive, send_with_id)
                    return
                await self.app(scope, receive, send_with_id)
            else:
                await self.app(scope, _counting(receive, limit), send_with_id)
        except Exception as exc:  # last resort: log it, answer 500, keep serving
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
            self._count(scope, status)
            if trace is not None and trace.recording:
                self.tracing.end(trace, status, _span_attributes(scope, request_id))
            if self.access_log is not None:
                self._log_access(self.access_log, scope, request_id, status, started)
            if self.audit.enabled and scope["path"] not in _UNAUDITED:
                self._audit(scope, request_id, status)

    def _count(self, scope: Scope, status: int) -> None:
        # Label values stay bounded: the route's template (`/admin/keys/{key_id}/revoke`),
        # the path of a request refused before routing (413) if a route serves it, else
        # "(unmatched)".
        route = scope.get("route")
        path = getattr(route, "path", None) or scope["path"]
        if route is None and path not in self._paths:
            path = "(unmatched)"
        counter = self._counters.get((path, status))
        if counter is None:
            counter = self._counters[(path, status)] = self._responses.labels(path, str(status))
        counter.inc()

    def _log_access(
        self, access_log: AccessLog, scope: Scope, request_id: str, status: int, started: float
    ) -> None:
        fields: dict[str, Any] = {
            "request_id": request_id,
            "method": scope["method"],
            "path": scope["path"],
            "status": status,
            "duration_ms": round((time.perf_counter() - started) * 1000, 2),
        }
        trace = scope["state"].get("trace")
        if trace is not None:
            fields["trace_id"] = trace.trace_id
        principal = scope["state"].get("principal")
        if principal is not None:
            fields["principal"] = principal.label
            if principal.team is not None:
                fields["team"] = principal.team
        call = scope["state"].get("call")
        if call is not None:
            fields.update(
                model=call.model,
                prompt_tokens=call.prompt_tokens,
                completion_tokens=call.completion_tokens,
                call_status=call.status,
                error_code=call.error_code,
                cost=round(call.cost, 10),
                confidence=call.confidence,
            )
            fields.update(call.timings_ms())
            if call.log_fields:
                fields.update(call.log_fields)
        access_log.write(fields)

    def _audit(self, scope: Scope, request_id: str, status: int) -> None:
        principal = scope["state"].get("principal")
        data: dict[str, Any] = {"method": scope["method"], "path": scope["path"], "status": status}
        call = scope["state"].get("call")
        content = None
        if call is not None:
            data.update(
                model=call.model,
                endpoint=call.endpoint,
                prompt_tokens=call.prompt_tokens,
                completion_tokens=call.completion_tokens,
                error_code=call.error_code,
            )
            if call.log_fields:
                data.update(call.log_fields)
            content = call.audit_content
        self.audit.record(
            "request",
            principal=None if principal is None else principal.label,
            request_id=request_id,
            data=data,
            content=content,
        )


def _too_large(limit: tuple[int, str]) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the request body is larger than the {limit[0]}-byte limit ({limit[1]})"
    )


def _counting(receive: Receive, limit: tuple[int, str]) -> Receive:
    """A chunked body has no declared length: count it as it arrives."""
    seen = 0

    async def counting_receive() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit[0]:
                raise _too_large(limit)
        return message

    return counting_receive


def _span_attributes(scope: Scope, request_id: str) -> dict[str, Any]:
    """The request span's attributes: who, which model, what it used and cost. No content."""
    state = scope["state"]
    attrs: dict[str, Any] = {
        "shipway.request_id": request_id,
        "http.request.method": scope["method"],
        "url.path": scope["path"],
    }
    route = scope.get("route")
    if route is not None:
        attrs["http.route"] = route.path
    principal = state.get("principal")
    if principal is not None:
        attrs["shipway.principal"] = principal.label
    call = state.get("call")
    if call is not None:
        attrs["gen_ai.request.model"] = call.model
        attrs["gen_ai.usage.input_tokens"] = call.prompt_tokens
        attrs["gen_ai.usage.output_tokens"] = call.completion_tokens
        attrs["shipway.cost"] = call.cost
        if call.error_code:
            attrs["error.type"] = call.error_code
        if call.confidence is not None:
            attrs["shipway.confidence"] = call.confidence
    return attrs
