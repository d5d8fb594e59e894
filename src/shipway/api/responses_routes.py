"""`POST /v1/responses`: OpenAI's Responses API, stateless (``store: false``).

A model whose upstream speaks `/v1/responses` itself (``responses_api: true``) gets the body
forwarded as sent (api/responses_forward.py); every other model, local ones included, is
served through chat completions (api/responses_body.py and responses_translate.py in,
responses_output.py and responses_events.py out). Both run the pipeline's ``chat`` /
``stream``, so keys, limits, guards, the queue, accounting, cost, traces and audit apply as
for chat, under ``endpoint="responses"``.

Errors keep OpenAI's envelope with ``param`` named the Responses way (``input[2].content``,
``max_output_tokens``); a stream is held until its first content so that early errors keep
their status code, and an error after that is told as ``error`` + ``response.failed`` events.
Stored responses (retrieve, delete, input items, cancel) answer a 400 saying they are not kept.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shipway.api.access import Access, Endpoint, RouteAccess
from shipway.api.http_input import ClientGone, read_json, unless_disconnected
from shipway.api.responses_body import ResponsesBody, echo_fields
from shipway.api.responses_events import EventStream
from shipway.api.responses_forward import Forwarding
from shipway.api.responses_output import ResponseHead, failure_events, from_chat
from shipway.api.responses_translate import responses_param, translate
from shipway.api.route_support import (
    CLIENT_CLOSED,
    SSE_HEADERS,
    ClosingStream,
    hold_until_output,
    json_response,
    new_call,
    principal_of,
    wants_cost,
)
from shipway.api.schemas import parse_body
from shipway.backends.base import ChatRequest
from shipway.backends.generation_defaults import apply_defaults
from shipway.config import GenerationDefaults
from shipway.errors import InvalidRequest, ShipwayError
from shipway.pipeline import Call, Pipeline

__all__ = ["ResponsesRoutes"]

_NOT_STORED = (
    "responses are not stored here yet (every response is `store: false`), so there is none "
    "to {what}; keep the response you received and send its output items back in `input`"
)


class ResponsesRoutes:
    def __init__(
        self,
        pipeline: Pipeline,
        max_messages: int,
        access: RouteAccess,
        defaults: Mapping[str, GenerationDefaults],
    ) -> None:
        self.pipeline = pipeline
        self.max_messages = max_messages
        self.access = access
        self.defaults = defaults

    def routes(self) -> list[Route]:
        def user(endpoint: Endpoint) -> Endpoint:
            return self.access.protect(endpoint, Access.USER)

        stored = "/v1/responses/{response_id}"
        return [
            Route("/v1/responses", user(self.create), methods=["POST"]),
            Route(stored, user(self.not_stored), methods=["GET", "DELETE"]),
            Route(stored + "/input_items", user(self.not_stored), methods=["GET"]),
            Route(stored + "/cancel", user(self.not_stored), methods=["POST"]),
        ]

    async def not_stored(self, request: Request) -> Response:
        what = {"GET": "retrieve", "DELETE": "delete", "POST": "cancel"}[request.method]
        raise InvalidRequest(_NOT_STORED.format(what=what), code="response_not_stored")

    async def create(self, request: Request) -> Response:
        raw = await read_json(request)
        if not isinstance(raw, dict):
            raise InvalidRequest("the request body must be a JSON object")
        self._check_input_count(raw)
        forwarding = self._forwarding(raw)
        if forwarding is not None:
            return await self._forward(request, raw, forwarding)
        body = parse_body(ResponsesBody, raw)
        translated = translate(body)
        chat = self._with_defaults(request, body.model, translated.chat)
        call = new_call(request, "responses", body.model, body.timeout, raw)
        head = ResponseHead(call.request_id, body.model, echo_fields(body, chat))
        sources = translated.sources
        with_cost = wants_cost(request)
        if body.stream:
            chunks = self.pipeline.stream(call, chat)
            stream = EventStream(head)

            async def events(held: list[dict[str, Any]]) -> AsyncGenerator[bytes, None]:
                try:
                    for event in stream.start():
                        yield _sse(event)
                    async for chunk in _chained(held, chunks):
                        for event in stream.feed(chunk):
                            yield _sse(event)
                    *closing, final = stream.finish()
                    if with_cost:
                        cost = self.pipeline.usage_cost(call.model, stream.chat_usage)
                        final["response"]["usage"]["cost"] = cost
                    for event in (*closing, final):
                        yield _sse(event)
                except ShipwayError as error:  # headers are gone: told in the stream
                    error.param = responses_param(error.param, sources)
                    for event in stream.fail(error):
                        yield _sse(event)

            return await self._streamed(request, call, chunks, events, sources)
        answer = await self._answer(request, self.pipeline.chat(call, chat), sources)
        if answer is None:
            return Response(status_code=CLIENT_CLOSED)
        response = from_chat(head, answer)
        if with_cost:
            usage = answer.get("usage") or {}
            response["usage"]["cost"] = self.pipeline.usage_cost(call.model, usage)
        return json_response(response, headers=call.response_headers)

    # -- forwarded as sent ----------------------------------------------------------------------
    def _forwarding(self, raw: dict[str, Any]) -> Forwarding | None:
        """The forwarding for this body if its model's upstream speaks `/v1/responses`."""
        model = raw.get("model")
        if not isinstance(model, str):
            return None
        runner = self.pipeline.engine.runners.get(model)
        upstream = runner.upstream if runner is not None else None
        if upstream is None or not upstream.settings.responses_api:
            return None
        return Forwarding(raw, model)

    async def _forward(self, request: Request, raw: dict[str, Any], fwd: Forwarding) -> Response:
        stream, timeout = raw.get("stream"), raw.get("timeout")
        if not isinstance(stream, bool | None):
            raise InvalidRequest("Invalid value for 'stream': expected a boolean", param="stream")
        if not isinstance(timeout, int | float | None) or isinstance(timeout, bool):
            raise InvalidRequest("Invalid value for 'timeout': expected seconds", param="timeout")
        chat = self._with_defaults(request, fwd.alias, fwd.chat)
        call = new_call(request, "responses", fwd.alias, timeout)
        with_cost = wants_cost(request)
        if stream:
            chunks = self.pipeline.stream(call, chat, fwd.stream)

            async def events(held: list[dict[str, Any]]) -> AsyncGenerator[bytes, None]:
                last = ResponseHead(call.request_id, fwd.alias, {}).response("in_progress", [])
                sequence = 0
                try:
                    async for event in _chained(held, chunks):
                        last = event.get("response") or last
                        sequence = int(event.get("sequence_number") or sequence) + 1
                        if with_cost:
                            self._add_cost(call, event.get("response"))
                        yield _sse(event)
                except ShipwayError as error:  # headers are gone: told in the stream
                    error.param = responses_param(error.param, fwd.sources)
                    for event in failure_events(last, error, sequence):
                        yield _sse(event)

            return await self._streamed(request, call, chunks, events, fwd.sources)
        answer = await self._answer(request, self.pipeline.chat(call, chat, fwd.send), fwd.sources)
        if answer is None:
            return Response(status_code=CLIENT_CLOSED)
        if with_cost:
            self._add_cost(call, answer)
        return json_response(answer, headers=call.response_headers)

    def _add_cost(self, call: Call, response: Any) -> None:
        """``usage.cost`` on an upstream's Response that carries usage."""
        usage = response.get("usage") if isinstance(response, dict) else None
        if isinstance(usage, dict):
            counts = {
                "prompt_tokens": usage.get("input_tokens"),
                "completion_tokens": usage.get("output_tokens"),
            }
            usage["cost"] = self.pipeline.usage_cost(call.model, counts)

    # -- shared -----------------------------------------------------------------------------------
    def _with_defaults(self, request: Request, model: str, chat: ChatRequest) -> ChatRequest:
        defaults = self.defaults.get(model)
        if defaults is None:
            return chat
        return apply_defaults(chat, defaults, principal_of(request).max_tokens)

    async def _answer(
        self, request: Request, work: Any, sources: list[tuple[str, str | None]]
    ) -> dict[str, Any] | None:
        """The pipeline's answer (None: the client left); errors named the Responses way."""
        try:
            answer: dict[str, Any] = await unless_disconnected(request, work)
        except ClientGone:
            return None
        except ShipwayError as error:
            error.param = responses_param(error.param, sources)
            raise
        return answer

    async def _streamed(
        self,
        request: Request,
        call: Call,
        chunks: AsyncGenerator[dict[str, Any], None],
        events: Any,
        sources: list[tuple[str, str | None]],
    ) -> Response:
        """Hold the stream until its first content, then send ``events(held)`` as SSE."""
        try:
            held = await unless_disconnected(request, hold_until_output(chunks))
        except ClientGone:
            await chunks.aclose()
            return Response(status_code=CLIENT_CLOSED)
        except ShipwayError as error:
            await chunks.aclose()
            error.param = responses_param(error.param, sources)
            raise
        except BaseException:
            await chunks.aclose()
            raise
        return ClosingStream(
            _closing(events(held), chunks),
            closes=chunks,
            media_type="text/event-stream",
            headers={**SSE_HEADERS, **call.response_headers},
        )

    def _check_input_count(self, raw: dict[str, Any]) -> None:
        """Before validation: validating 100,000 empty items is itself the attack."""
        items = raw.get("input")
        if isinstance(items, list) and len(items) > self.max_messages:
            raise InvalidRequest(
                f"Invalid 'input': array too long. Expected an array with maximum length "
                f"{self.max_messages}, but got an array with length {len(items)} instead "
                "(server.max_messages).",
                param="input",
                code="array_above_max_length",
            )


async def _chained(
    held: list[dict[str, Any]], rest: AsyncIterator[dict[str, Any]]
) -> AsyncGenerator[dict[str, Any], None]:
    for chunk in held:
        yield chunk
    async for chunk in rest:
        yield chunk


async def _closing(
    events: AsyncGenerator[bytes, None], chunks: AsyncGenerator[dict[str, Any], None]
) -> AsyncGenerator[bytes, None]:
    try:
        async for data in events:
            yield data
    finally:
        await chunks.aclose()


def _sse(event: dict[str, Any]) -> bytes:
    # OpenAI names each event twice, in `event:` and in the data's `type`; clients read either.
    return b"event: " + str(event["type"]).encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"
