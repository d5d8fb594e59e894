"""OpenAI-compatible routes: chat completions (plain and SSE), embeddings, models.

HTTP only: parse the request into typed objects and a ``Call``, run it through the
pipeline, render OpenAI's wire format. A streamed response is held back until its first
chunk with content (or its end) so that errors found before generation — queue full,
deadline, context length — still get their proper status code instead of a broken stream.
"""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shipway.api.access import Access, Endpoint, RouteAccess
from shipway.api.http_input import ClientGone, read_json, unless_disconnected
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
from shipway.api.schemas import ChatCompletionBody, EmbeddingBody, parse_body
from shipway.backends.base import ChatRequest, EmbedRequest
from shipway.backends.generation_defaults import apply_defaults
from shipway.config import GenerationDefaults
from shipway.errors import InvalidRequest, ShipwayError
from shipway.pipeline import Call, Pipeline

__all__ = ["OpenAIRoutes"]

_MAX_EMBED_INPUTS = 2048


class OpenAIRoutes:
    def __init__(
        self,
        pipeline: Pipeline,
        owned_by: dict[str, str],
        max_messages: int,
        access: RouteAccess,
        defaults: Mapping[str, GenerationDefaults],
    ) -> None:
        self.pipeline = pipeline
        self.access = access
        self.owned_by = owned_by
        self.defaults = defaults
        self.max_messages = max_messages
        self.created = int(time.time())

    def routes(self) -> list[Route]:
        def user(endpoint: Endpoint) -> Endpoint:
            return self.access.protect(endpoint, Access.USER)

        return [
            Route("/v1/chat/completions", user(self.chat_completions), methods=["POST"]),
            Route("/v1/embeddings", user(self.embeddings), methods=["POST"]),
            Route("/v1/models", user(self.list_models), methods=["GET"]),
            Route("/v1/models/{model:path}", user(self.get_model), methods=["GET"]),
        ]

    # -- chat ---------------------------------------------------------------------------------
    async def chat_completions(self, request: Request) -> Response:
        raw = await read_json(request)
        self._check_message_count(raw)
        body = parse_body(ChatCompletionBody, raw)
        if body.stream_options is not None and not body.stream:
            raise InvalidRequest(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                param="stream_options",
            )
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        chat = ChatRequest(
            messages=raw["messages"],  # validated above; kept as sent, for any backend
            max_tokens=body.max_completion_tokens
            if body.max_completion_tokens is not None
            else body.max_tokens,
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            stop=stop,
            seed=body.seed,
            logprobs=bool(body.logprobs),
            top_logprobs=body.top_logprobs or 0,
            frequency_penalty=body.frequency_penalty or 0.0,
            presence_penalty=body.presence_penalty or 0.0,
            ignore_eos=bool(body.ignore_eos),
            body=raw,
        )
        defaults = self.defaults.get(body.model)
        if defaults is not None:
            chat = apply_defaults(chat, defaults, principal_of(request).max_tokens)
        call = new_call(request, "chat.completions", body.model, body.timeout, raw)
        stamp = {
            "id": f"chatcmpl-{call.request_id}",
            "created": int(time.time()),
            "model": body.model,
        }
        with_cost = wants_cost(request)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return await self._stream(request, call, chat, stamp, include_usage, with_cost)
        try:
            result = await unless_disconnected(request, self.pipeline.chat(call, chat))
        except ClientGone:
            return Response(status_code=CLIENT_CLOSED)
        if with_cost and isinstance(result.get("usage"), dict):
            result["usage"]["cost"] = self.pipeline.usage_cost(call.model, result["usage"])
        stamp["model"] = call.model  # who answered: a route's or a budget fallback's choice
        result.update(stamp)
        result["object"] = "chat.completion"
        return json_response(result, headers=call.response_headers)

    async def _stream(
        self,
        request: Request,
        call: Call,
        chat: ChatRequest,
        stamp: dict[str, Any],
        include_usage: bool,
        with_cost: bool,
    ) -> Response:
        chunks = self.pipeline.stream(call, chat)
        try:
            held = await unless_disconnected(request, hold_until_output(chunks))
        except ClientGone:
            await chunks.aclose()
            return Response(status_code=CLIENT_CLOSED)
        except BaseException:
            await chunks.aclose()
            raise
        stamp["model"] = call.model  # who answers: a route's or a budget fallback's choice
        return ClosingStream(
            _sse(
                held,
                chunks,
                stamp,
                include_usage,
                self.pipeline.usage_cost if with_cost else None,
            ),
            closes=chunks,
            media_type="text/event-stream",
            headers={**SSE_HEADERS, **call.response_headers},
        )

    # -- embeddings -----------------------------------------------------------------------------
    async def embeddings(self, request: Request) -> Response:
        raw = await read_json(request)
        body = parse_body(EmbeddingBody, raw)
        inputs = _embedding_inputs(body.input)
        call = new_call(request, "embeddings", body.model, body.timeout, raw)
        embed = EmbedRequest(inputs=inputs, dimensions=body.dimensions, body=raw)
        try:
            result = await unless_disconnected(request, self.pipeline.embed(call, embed))
        except ClientGone:
            return Response(status_code=CLIENT_CLOSED)
        usage: dict[str, Any] = {
            "prompt_tokens": result.prompt_tokens,
            "total_tokens": result.prompt_tokens,
        }
        if wants_cost(request):
            usage["cost"] = self.pipeline.usage_cost(call.model, usage)
        vectors = result.vectors
        if body.encoding_format == "base64":
            rows: list[Any] = [
                base64.b64encode(vectors[i].astype("<f4").tobytes()).decode("ascii")
                for i in range(len(vectors))
            ]
        else:
            rows = list(vectors)
        return json_response(
            {
                "object": "list",
                "data": [
                    {"object": "embedding", "index": i, "embedding": row}
                    for i, row in enumerate(rows)
                ],
                "model": call.model,
                "usage": usage,
            },
            headers=call.response_headers,
        )

    # -- models ---------------------------------------------------------------------------------
    def _model_card(self, alias: str) -> dict[str, Any]:
        return {
            "id": alias,
            "object": "model",
            "created": self.created,
            "owned_by": self.owned_by[alias],
        }

    async def list_models(self, request: Request) -> Response:
        principal = principal_of(request)
        cards = [self._model_card(a) for a in self.owned_by if principal.may_use(a)]
        return json_response({"object": "list", "data": cards})

    async def get_model(self, request: Request) -> Response:
        alias = request.path_params["model"]
        # A model the caller may not use is not shown, as in the list: 404 with its models.
        self.pipeline.visible_runner(alias, principal_of(request))
        return json_response(self._model_card(alias))

    # -- helpers --------------------------------------------------------------------------------
    def _check_message_count(self, raw: Any) -> None:
        """Before validation: validating 100,000 empty messages is itself the attack."""
        messages = raw.get("messages") if isinstance(raw, dict) else None
        if isinstance(messages, list) and len(messages) > self.max_messages:
            raise InvalidRequest(
                f"Invalid 'messages': array too long. Expected an array with maximum length "
                f"{self.max_messages}, but got an array with length {len(messages)} instead "
                "(server.max_messages).",
                param="messages",
                code="array_above_max_length",
            )


async def _sse(
    held: list[dict[str, Any]],
    chunks: AsyncGenerator[dict[str, Any], None],
    stamp: dict[str, Any],
    include_usage: bool,
    usage_cost: Callable[[str, dict[str, Any]], dict[str, Any]] | None,
) -> AsyncGenerator[bytes, None]:
    async def all_chunks() -> AsyncGenerator[dict[str, Any], None]:
        for chunk in held:
            yield chunk
        async for chunk in chunks:
            yield chunk

    try:
        async for chunk in all_chunks():
            is_usage_chunk = not chunk.get("choices") and chunk.get("usage") is not None
            if is_usage_chunk and not include_usage:
                continue
            if is_usage_chunk and usage_cost is not None:
                chunk["usage"]["cost"] = usage_cost(stamp["model"], chunk["usage"])
            chunk.update(stamp)
            chunk["object"] = "chat.completion.chunk"
            if not include_usage or chunk.get("usage") is None:
                # OpenAI's schema types `usage` as an object: absent, not null, until the end.
                chunk.pop("usage", None)
            yield b"data: " + orjson.dumps(chunk) + b"\n\n"
    except ShipwayError as error:
        # Headers are gone already; OpenAI clients raise on an `error` event.
        yield b"data: " + orjson.dumps(error.to_dict()) + b"\n\n"
        return
    finally:
        await chunks.aclose()
    yield b"data: [DONE]\n\n"


def _embedding_inputs(value: str | list[str] | list[int] | list[list[int]]) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not value:
        raise InvalidRequest("'input' must not be empty", param="input")
    if len(value) > _MAX_EMBED_INPUTS:
        raise InvalidRequest(
            f"'input' has {len(value)} items; at most {_MAX_EMBED_INPUTS} per request",
            param="input",
        )
    if not all(isinstance(item, str) for item in value):
        raise InvalidRequest(
            "token-array input is not supported; send the text as strings", param="input"
        )
    texts: list[str] = value  # type: ignore[assignment]
    for i, text in enumerate(texts):
        if not text:
            raise InvalidRequest(f"'input[{i}]' is an empty string", param=f"input[{i}]")
    return texts
