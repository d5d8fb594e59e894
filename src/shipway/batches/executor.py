"""One batch line, run as the interactive request it describes.

The line's body goes to the same route code an HTTP request to its url reaches (parsing,
generation defaults, the answer's shape), in-process, as the batch creator's principal; that
code runs it through the shared pipeline (route, limits, guards, cache, budget, queue,
backend, accounting), which sees it only through ``_LinePipeline``: every call at
``Priority.BATCH`` and tagged with its batch, so its cost is attributed to it. The answer is
exactly what the endpoint would have sent: its status code and JSON body.

Some refusals say "not now" rather than "no" (queue full, rate limit with a retry time, model
restarting, the deadline passed while the line still waited for a slot): those are
``Retry`` and the runner tries the line again later, instead of writing a failure.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message

from shipway.api.access import RouteAccess
from shipway.api.completions_routes import CompletionRoutes
from shipway.api.openai_routes import OpenAIRoutes
from shipway.backends.base import ChatRequest, EmbedRequest, EmbedResult
from shipway.config import LlamaCppModel, OpenAIUpstreamModel, ShipwaySettings
from shipway.engine.admission import Priority
from shipway.errors import (
    ConcurrencyLimited,
    DeadlineExceeded,
    FirstTokenTimeout,
    ModelUnavailable,
    QueueFull,
    RateLimited,
    ShipwayError,
    StoreUnavailable,
    UpstreamError,
)
from shipway.pipeline import Call, Dispatch, Pipeline
from shipway.security.principal import Principal
from shipway.store.batches import ClaimedLine, LineOutcome

__all__ = ["LineExecutor", "Retry"]

_Endpoint = Callable[[Request], Awaitable[Response]]
_RETRY_KINDS = frozenset({"rate_limited", "unreachable"})


class Retry(Exception):
    """Run the line again after ``after_s`` seconds (None: the runner's own backoff)."""

    def __init__(self, reason: str, after_s: float | None, outcome: LineOutcome) -> None:
        super().__init__(reason)
        self.reason = reason
        self.after_s = after_s
        self.outcome = outcome
        """What to write if the line may not be tried again."""


class _LinePipeline(Pipeline):
    """The shared pipeline as one batch line sees it (same services, not copies)."""

    def __init__(self, shared: Pipeline, batch_id: str) -> None:
        # Not super().__init__: this is the shared pipeline, with two things added to calls.
        self.__dict__.update(shared.__dict__)
        self.batch_id = batch_id
        self.calls: list[Call] = []

    def _mark(self, call: Call) -> None:
        call.priority = Priority.BATCH
        call.batch_id = self.batch_id
        self.calls.append(call)

    async def chat(
        self, call: Call, request: ChatRequest, dispatch: Dispatch | None = None
    ) -> dict[str, Any]:
        self._mark(call)
        return await super().chat(call, request, dispatch)

    async def embed(self, call: Call, request: EmbedRequest) -> EmbedResult:
        self._mark(call)
        return await super().embed(call, request)


class LineExecutor:
    def __init__(self, settings: ShipwaySettings, pipeline: Pipeline, access: RouteAccess) -> None:
        self._pipeline = pipeline
        self._access = access
        self._max_messages = settings.server.max_messages
        self._defaults = {
            alias: model.defaults
            for alias, model in settings.models.items()
            if isinstance(model, LlamaCppModel | OpenAIUpstreamModel)
        }
        self._max_tokens = {alias: m.max_tokens_limit for alias, m in settings.models.items()}
        self._log = structlog.get_logger("shipway.batches")

    def _endpoints(self, pipeline: Pipeline) -> Mapping[str, _Endpoint]:
        chat = OpenAIRoutes(pipeline, {}, self._max_messages, self._access, self._defaults)
        text = CompletionRoutes(pipeline, self._access, self._defaults, self._max_tokens)
        return {
            "/v1/chat/completions": chat.chat_completions,
            "/v1/embeddings": chat.embeddings,
            "/v1/completions": text.completions,
        }

    async def run(self, line: ClaimedLine, url: str, principal: Principal) -> LineOutcome:
        """The line's outcome; raises ``Retry`` when it should run again later."""
        pipeline = _LinePipeline(self._pipeline, line.batch_id)
        endpoint = self._endpoints(pipeline)[url]
        request_id = os.urandom(16).hex()
        request = _request(url, line.request, request_id, principal)
        try:
            response = await endpoint(request)
        except ShipwayError as error:
            outcome = LineOutcome(
                ok=False,
                response={
                    "status_code": error.status,
                    "request_id": request_id,
                    "body": error.to_dict(),
                },
                **_usage(pipeline.calls),
            )
            _retry_if_transient(error, pipeline.calls, outcome)
            return outcome
        except Exception as exc:  # noqa: BLE001 - a bug must fail one line, not the batch
            self._log.error("batch line failed", batch_id=line.batch_id, exc_info=exc)
            return LineOutcome(
                ok=False,
                response=None,
                error={"code": "internal_error", "message": f"internal error ({request_id})"},
            )
        return LineOutcome(
            ok=response.status_code < 400,
            response={
                "status_code": response.status_code,
                "request_id": request_id,
                "body": orjson.loads(bytes(response.body)),
            },
            **_usage(pipeline.calls),
        )


def _request(url: str, body: dict[str, Any], request_id: str, principal: Principal) -> Request:
    """An ASGI request carrying ``body``, as the access layer would hand it to the route."""
    payload = orjson.dumps(body)
    sent = False
    never = asyncio.Event()

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": payload, "more_body": False}
        await never.wait()  # no client to go away: the line runs to its end or deadline
        return {"type": "http.disconnect"}

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": url,
        "raw_path": url.encode(),
        "query_string": b"",
        "headers": [(b"content-type", b"application/json")],
        "client": None,
        "server": None,
        "state": {"request_id": request_id, "principal": principal, "trace": None},
    }
    return Request(scope, receive)


def _retry_if_transient(error: ShipwayError, calls: list[Call], outcome: LineOutcome) -> None:
    if isinstance(
        error,
        QueueFull | ModelUnavailable | StoreUnavailable | ConcurrencyLimited | FirstTokenTimeout,
    ):
        raise Retry(error.code or type(error).__name__, error.retry_after, outcome)
    if isinstance(error, RateLimited) and error.retry_after is not None:
        raise Retry("rate_limited", error.retry_after, outcome)
    if isinstance(error, UpstreamError) and error.kind in _RETRY_KINDS:
        raise Retry(f"upstream_{error.kind}", error.retry_after, outcome)
    if isinstance(error, DeadlineExceeded) and all(c.admitted_at is None for c in calls):
        raise Retry("deadline_in_queue", None, outcome)


def _usage(calls: list[Call]) -> dict[str, Any]:
    return {
        "input_tokens": sum(call.prompt_tokens for call in calls),
        "output_tokens": sum(call.completion_tokens for call in calls),
    }
