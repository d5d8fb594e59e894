"""``POST /v1/completions``: OpenAI's legacy text completions, through the chat pipeline.

A completion is a ``ChatRequest`` whose ``prompt`` is set, with the same text as its one user
message so the input limits, rate limits and guards read it as they read a chat: auth, model
access, limits, guards, queue, deadline, accounting, traces and audit are the chat path's
own. A local model continues the prompt as plain text (no chat template); an upstream gets
the body at its own ``/v1/completions``. api/completion_shape.py makes the answers
``text_completion`` choices.

A list of prompts is one pipeline call per prompt (each rate-limited, queued and counted on
its own; up to ``_CONCURRENT_PROMPTS`` at a time, or streamed one after the other), answered
as one body whose choice ``i * n + j`` is prompt ``i``'s ``j``-th answer, with one access-log
line and audit record for the request (api/completion_calls.py).

Answer length when the client sets none: the model's ``defaults.max_tokens`` if it has one
(the embedded model's keep a 135M model from rambling), else OpenAI's legacy 16; either is
lowered to the model's and the key's caps.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shipway.api.access import Access, RouteAccess
from shipway.api.completion_calls import PromptCall, UsageTotal, summarise
from shipway.api.completion_shape import PromptShaper
from shipway.api.completion_stream import (
    Cost,
    completion_events,
    every_prompt,
    hold_first_output,
)
from shipway.api.http_input import ClientGone, read_json, unless_disconnected
from shipway.api.route_support import (
    CLIENT_CLOSED,
    SSE_HEADERS,
    ClosingStream,
    json_response,
    new_call,
    principal_of,
    wants_cost,
)
from shipway.api.schemas import CompletionBody, parse_body
from shipway.backends.base import ChatRequest
from shipway.backends.generation_defaults import apply_defaults
from shipway.config import GenerationDefaults
from shipway.errors import InvalidRequest, ShipwayError, UnsupportedParameter
from shipway.pipeline import Call, Pipeline
from shipway.security.input_limits import check_control_characters

__all__ = ["CompletionRoutes"]

_ENDPOINT = "completions"
_LEGACY_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
_MAX_CHOICES = 128  # prompts times n; OpenAI's own ceiling on n
_CONCURRENT_PROMPTS = 4


class CompletionRoutes:
    def __init__(
        self,
        pipeline: Pipeline,
        access: RouteAccess,
        defaults: Mapping[str, GenerationDefaults],
        max_tokens_limits: Mapping[str, int | None],
    ) -> None:
        self.pipeline = pipeline
        self.access = access
        self.defaults = defaults
        self.max_tokens_limits = max_tokens_limits

    def routes(self) -> list[Route]:
        endpoint = self.access.protect(self.completions, Access.USER)
        return [Route("/v1/completions", endpoint, methods=["POST"])]

    async def completions(self, request: Request) -> Response:
        raw = await read_json(request)
        body = parse_body(CompletionBody, raw)
        texts = _prompt_texts(body)
        prompts = [self._prompt(request, body, raw, texts, i) for i in range(len(texts))]
        # The access log, the audit record and the request span read the call registered
        # last: the prompt's own, or for a list one that gets their sums at the end.
        summary = prompts[0].call
        if len(prompts) > 1:
            summary = new_call(request, _ENDPOINT, body.model, body.timeout, raw)
        stamp: dict[str, Any] = {
            "id": f"cmpl-{summary.request_id}",
            "created": int(time.time()),
            "model": body.model,
        }
        cost = self.pipeline.usage_cost if wants_cost(request) else None
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return await self._stream(request, prompts, summary, stamp, include_usage, cost)
        try:
            results = await unless_disconnected(request, self._answer_all(prompts))
        except ClientGone:
            return Response(status_code=CLIENT_CLOSED)
        finally:
            summarise(summary, [p.call for p in prompts])
        usage = UsageTotal()
        choices: list[dict[str, Any]] = []
        for prompt, result in zip(prompts, results, strict=True):
            usage.add(result.get("usage"))
            choices += [prompt.shaper.choice(c) for c in result.get("choices") or ()]
        out = {**stamp, "object": "text_completion", "choices": choices}
        if usage.seen:
            out["usage"] = usage.body(body.model, cost)
        return json_response(out, headers=summary.response_headers)

    def _prompt(
        self, request: Request, body: CompletionBody, raw: dict[str, Any], texts: list[str], i: int
    ) -> PromptCall:
        text = texts[i]
        chat = ChatRequest(
            messages=[{"role": "user", "content": text}],
            prompt=text,
            max_tokens=body.max_tokens,
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            stop=[body.stop] if isinstance(body.stop, str) else list(body.stop or []),
            seed=body.seed,
            logprobs=body.logprobs is not None,  # the legacy integer is how many alternatives
            top_logprobs=body.logprobs or 0,
            frequency_penalty=body.frequency_penalty or 0.0,
            presence_penalty=body.presence_penalty or 0.0,
            ignore_eos=bool(body.ignore_eos),
            body={**raw, "prompt": text},  # an upstream gets one prompt per call
        )
        key_cap = principal_of(request).max_tokens
        defaults = self.defaults.get(body.model)
        if defaults is not None:
            chat = apply_defaults(chat, defaults, key_cap)
        if chat.body.get("max_tokens") is None:
            caps = (_LEGACY_MAX_TOKENS, key_cap, self.max_tokens_limits.get(body.model))
            length = min(cap for cap in caps if cap is not None)
            chat = dataclasses.replace(
                chat, max_tokens=length, body={**chat.body, "max_tokens": length}
            )
        shaper = PromptShaper(
            text, echo=bool(body.echo), logprobs=body.logprobs is not None, first_index=i * _n(body)
        )
        call = new_call(request, _ENDPOINT, body.model, body.timeout, raw)
        return PromptCall(call, chat, shaper, "prompt" if len(texts) == 1 else f"prompt[{i}]")

    async def _answer(self, prompt: PromptCall) -> dict[str, Any]:
        try:
            return await self.pipeline.chat(prompt.call, prompt.chat)
        except ShipwayError as error:
            prompt.name_in(error)
            raise

    async def _answer_all(self, prompts: list[PromptCall]) -> list[dict[str, Any]]:
        if len(prompts) == 1:
            return [await self._answer(prompts[0])]
        limit = asyncio.Semaphore(_CONCURRENT_PROMPTS)

        async def one(prompt: PromptCall) -> dict[str, Any]:
            async with limit:
                return await self._answer(prompt)

        tasks = [asyncio.ensure_future(one(prompt)) for prompt in prompts]
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            # One prompt failed (its error is the answer) or the client left: stop the rest.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _stream(
        self,
        request: Request,
        prompts: list[PromptCall],
        summary: Call,
        stamp: dict[str, Any],
        include_usage: bool,
        cost: Cost | None,
    ) -> Response:
        calls = [p.call for p in prompts]
        chunks = every_prompt(self.pipeline, prompts, lambda: summarise(summary, calls))
        try:
            held = await unless_disconnected(request, hold_first_output(chunks))
        except ClientGone:
            await chunks.aclose()
            return Response(status_code=CLIENT_CLOSED)
        except BaseException:
            await chunks.aclose()
            raise
        return ClosingStream(
            completion_events(held, chunks, prompts, stamp, include_usage, cost),
            closes=chunks,
            media_type="text/event-stream",
            # The later prompts' rate-limit headers come after the headers have gone.
            headers={**SSE_HEADERS, **prompts[0].call.response_headers},
        )


def _n(body: CompletionBody) -> int:
    return body.n or 1


def _prompt_texts(body: CompletionBody) -> list[str]:
    """The prompts as texts, after refusing what no model here answers."""
    prompt = body.prompt
    if prompt is None:
        texts = [""]  # OpenAI's default prompt is <|endoftext|>: start from nothing
    elif isinstance(prompt, str):
        texts = [prompt]
    elif not prompt:
        raise InvalidRequest("'prompt' must not be an empty array", param="prompt")
    elif not all(isinstance(item, str) for item in prompt):
        raise InvalidRequest(
            "token-array prompts are not supported; send the prompt as text (a string, or an "
            "array of strings for several prompts)",
            param="prompt",
        )
    else:
        texts = list(prompt)  # type: ignore[arg-type]  # all strings, checked above
    if body.suffix:
        raise UnsupportedParameter(
            "`suffix` (text to insert before) is not supported: the models here only continue "
            "a prompt; put the text in the prompt, or use /v1/chat/completions",
            param="suffix",
        )
    if body.best_of is not None and body.best_of > 1:
        raise UnsupportedParameter(
            "`best_of` greater than 1 is not supported; ask for `n` answers and pick one",
            param="best_of",
        )
    if body.stream_options is not None and not body.stream:
        raise InvalidRequest(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
        )
    if len(texts) * _n(body) > _MAX_CHOICES:
        raise InvalidRequest(
            f"{len(texts)} prompts with n={_n(body)} ask for {len(texts) * _n(body)} answers; "
            f"at most {_MAX_CHOICES} per request",
            param="prompt",
        )
    params = ["prompt"] if len(texts) == 1 else [f"prompt[{i}]" for i in range(len(texts))]
    check_control_characters(zip(params, texts, strict=True))
    return texts
