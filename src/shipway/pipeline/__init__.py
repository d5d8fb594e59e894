"""The request path, as one ordered list of stages.

    (authenticate: api/access.py, before the Call exists)
    choose route (a named route → its cheapest fitting model) → route (model exists,
    principal may use it) → input limits (max_tokens cap, prompt-size caps, control
    characters) → rate-limit (reserve requests and tokens) → guard (injection, PII) →
    cache lookup (a hit answers now) → budget (reserve the maximum cost, or fall back) →
    admit (queue, priority, deadline) → dispatch (backend) → restore (PII placeholders) →
    cache store → account (metrics, settle tokens and budget from real usage, attribution)

Every request is one ``Call`` that flows through the stages. Each stage is a small function
over the ``Call``; their logic lives in their own packages (``security/`` …) and the
pipeline only composes them. The cheap refusals come first: a request over its rate limit
costs no guard scan, and one refused by a guard holds no worker.

Deadlines: the whole call — waiting in the queue and running — must finish before
``call.deadline`` (event-loop time). Running out cancels the backend call, which tells a
worker to stop generating, and raises ``DeadlineExceeded`` (504). A client that disconnects
cancels the task that runs the pipeline, with the same effect.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from shipway.backends.base import MEAN_LOGPROB, Backend, ChatRequest, EmbedRequest, EmbedResult
from shipway.cache.stream_replay import StreamAssembler, replay_chunks
from shipway.config import ShipwaySettings
from shipway.engine.admission import Priority
from shipway.engine.engine import Engine, ModelRunner
from shipway.errors import (
    BudgetExceeded,
    DeadlineExceeded,
    InvalidRequest,
    ModelNotFound,
    PermissionDenied,
    ShipwayError,
    UpstreamError,
)
from shipway.pipeline.attempts import Attempts, Degraded, OpenStream, Switch
from shipway.pipeline.chunks import carries_output
from shipway.pipeline.cost_stages import NO_BUDGET, Budget, CostStages
from shipway.resilience.policies import Resilience
from shipway.resilience.retry import fallback_reason
from shipway.security.guard_stage import ChatGuarding, ChatStreamRestorer, Guards
from shipway.security.input_limits import (
    capped_max_tokens,
    check_control_characters,
    message_texts,
)
from shipway.security.principal import ANONYMOUS, Principal
from shipway.security.rate_limit import Admission, RateLimiter
from shipway.telemetry.metrics import Metrics
from shipway.telemetry.recent import RecentStats
from shipway.telemetry.tracing import RequestTrace

__all__ = ["Call", "Dispatch", "Pipeline", "StreamDispatch", "carries_output"]

# Chunks a stream may run ahead of its client. A local model's whole answer fits (n_ctx
# tokens), so its worker is never held by a slow reader; an upstream past this waits.
_BUFFERED_CHUNKS = 8192
_END = object()

# How a call reaches its backend when not as a chat completion (``/v1/responses`` forwarded to
# an upstream as sent): given the slot's backend and the guard's decision (the request to
# send, placeholders to restore), the answer or its events. Their usage may be spelled the
# Responses way (input_tokens / output_tokens, in the final event's response).
Dispatch = Callable[[Backend, ChatGuarding], Awaitable[dict[str, Any]]]
StreamDispatch = Callable[[Backend, ChatGuarding], AsyncGenerator[dict[str, Any], None]]


@dataclass(slots=True)
class Call:
    """One request's journey: who asked for what, when each stage happened, what it cost."""

    request_id: str
    endpoint: str
    model: str
    priority: Priority
    requested_timeout_s: float | None = None
    timeout_param: str = "timeout"
    timeout_s: float = 0.0
    deadline: float = 0.0
    received_at: float = field(default_factory=time.perf_counter)
    admitted_at: float | None = None
    first_chunk_at: float | None = None
    finished_at: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    status: int = 200
    error_code: str | None = None
    principal: Principal = ANONYMOUS
    response_headers: dict[str, str] = field(default_factory=dict)
    """Headers stages add to the response (rate limits, guard verdicts)."""
    log_fields: dict[str, Any] = field(default_factory=dict)
    """Fields stages add to the access-log line and the audit record (never secrets)."""
    reserved_tokens: int = 0
    """Tokens the rate-limit stage reserved (prompt estimate + answer cap)."""
    audit_content: dict[str, Any] | None = None
    """Prompt and answer, kept only with ``audit.store_content`` (stored encrypted)."""
    cost: float = 0.0
    """What the call cost at its model's price (``telemetry.currency``), set by account."""
    confidence: float | None = None
    """Mean log-probability of the answer's tokens, where the backend gives it."""
    trace: RequestTrace | None = None
    """The request's trace; stages record spans on it when it is exported."""
    requested_model: str | None = None
    """What the client named when another model serves (a route, a budget's fallback)."""
    user: str | None = None
    """The body's ``user`` field, for attribution."""
    tags: tuple[str, ...] = ()
    """``metadata.tags`` and the tags header, for budgets and attribution."""
    cache: str | None = None
    """The response cache's verdict: ``hit``, ``miss`` or ``bypass`` (None: not a chat)."""
    saved: float = 0.0
    """What a cache hit saved: the original call's cost."""
    batch_id: str | None = None
    prompt_estimate: int = 0
    """The prompt's tokens estimated before dispatch (4 characters a token)."""

    def timings_ms(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.admitted_at is not None:
            out["queue_ms"] = round((self.admitted_at - self.received_at) * 1000, 2)
        if self.first_chunk_at is not None:
            out["first_chunk_ms"] = round((self.first_chunk_at - self.received_at) * 1000, 2)
        if self.finished_at is not None:
            out["total_ms"] = round((self.finished_at - self.received_at) * 1000, 2)
        return out


class Pipeline:
    def __init__(
        self,
        engine: Engine,
        metrics: Metrics,
        settings: ShipwaySettings,
        limiter: RateLimiter,
        guards: Guards,
        recent: RecentStats,
        costs: CostStages,
        resilience: Resilience,
    ) -> None:
        self.engine = engine
        self.costs = costs
        self.attempts = Attempts(engine, resilience)
        self.metrics = metrics
        self.recent = recent
        self._prices = {alias: model.price for alias, model in settings.models.items()}
        self.currency = settings.telemetry.currency
        self.limiter = limiter
        self.guards = guards
        self.keep_content = settings.audit.enabled and settings.audit.store_content
        self._max_tokens = {
            alias: model.max_tokens_limit for alias, model in settings.models.items()
        }

    # -- stages ---------------------------------------------------------------------------
    def visible_runner(self, alias: str, principal: Principal) -> ModelRunner:
        """The model's runner, if this caller may see it; else 404 naming the ones it may."""
        runner = self.engine.runners.get(alias)
        if runner is None or not principal.may_use(alias):
            visible = sorted(a for a in self.engine.runners if principal.may_use(a))
            raise ModelNotFound(
                f"The model {alias!r} does not exist or you do not have access to it. "
                f"Models you may use: {', '.join(visible) or '(none)'}; see GET /v1/models",
                param="model",
            )
        return runner

    def _route(self, call: Call, capability: str, available: bool = True) -> ModelRunner:
        """``available=False``: the dispatch stage checks it (and falls back)."""
        principal = call.principal
        if self.costs.is_route(call.model) and call.requested_model is None:
            self.costs.choose_route(call, None, capability)
        if call.model in self.engine.runners and not principal.may_use(call.model):
            raise PermissionDenied(
                f"your key may not use model {call.model!r}; GET /v1/models lists the ones it may",
                param="model",
                code="model_not_allowed",
            )
        runner = self.visible_runner(call.model, principal)
        if capability not in runner.capabilities:
            raise InvalidRequest(
                f"model {call.model!r} does not support {capability}; it supports "
                f"{', '.join(sorted(runner.capabilities))}",
                param="model",
                code="model_not_supported",
            )
        if available:
            runner.check_available()
        call.response_headers["x-shipway-served-by"] = call.model
        limits = runner.queue_settings
        requested = call.requested_timeout_s
        if requested is not None and requested > limits.max_timeout_s:
            raise InvalidRequest(
                f"{call.timeout_param} {requested:g}s is above the limit of "
                f"{limits.max_timeout_s:g}s for model {call.model!r} (queue.max_timeout_s)",
                param=call.timeout_param,
            )
        call.timeout_s = requested or limits.timeout_s
        call.deadline = asyncio.get_running_loop().time() + call.timeout_s
        return runner

    @contextmanager
    def _accounted(self, call: Call) -> Iterator[None]:
        """The `account` stage: record outcome, timings and usage, whatever happens."""
        error: BaseException | None = None
        try:
            yield
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._account(call, error)

    def _account(self, call: Call, error: BaseException | None) -> None:
        call.finished_at = time.perf_counter()
        if isinstance(error, ShipwayError):
            call.status, call.error_code = error.status, error.code
        elif isinstance(error, asyncio.CancelledError | GeneratorExit):
            call.status, call.error_code = 499, "client_closed_request"
        elif error is not None:
            call.status, call.error_code = 500, "internal_error"
        # A client can name any model; only served ones become label values.
        model = call.model if call.model in self.engine.runners else "(unknown)"
        m = self.metrics.for_call(model, call.endpoint)
        m.finished(call.status)
        m.latency.observe(call.finished_at - call.received_at)
        if call.prompt_tokens:
            m.prompt_tokens.inc(call.prompt_tokens)
        if call.completion_tokens:
            m.completion_tokens.inc(call.completion_tokens)
        call.cost = self.costs.price(call)
        if call.cost:
            m.cost.inc(call.cost)
        self.costs.record(call)
        if call.admitted_at is not None:
            m.inference.observe(call.finished_at - call.admitted_at)
            if call.completion_tokens:
                m.per_output_token.observe(_per_output_token(call))
        if call.confidence is not None:
            m.uncertainty.observe(-call.confidence)
        if isinstance(error, UpstreamError):
            self.metrics.upstream_errors.labels(model, error.kind).inc()
        elif (
            isinstance(error, DeadlineExceeded)
            and call.admitted_at is not None  # the upstream had the call, not our queue
            and self._upstream(call.model)
        ):
            self.metrics.upstream_errors.labels(model, "timeout").inc()
        ttft = None if call.first_chunk_at is None else call.first_chunk_at - call.received_at
        self.recent.record(
            model,
            status=call.status,
            error_type=call.error_code,
            latency_s=call.finished_at - call.received_at,
            ttft_s=ttft,
            prompt_tokens=call.prompt_tokens,
            completion_tokens=call.completion_tokens,
            cost=call.cost,
            confidence=call.confidence,
        )

    def _upstream(self, alias: str) -> bool:
        runner = self.engine.runners.get(alias)
        return runner is not None and runner.upstream is not None

    def usage_cost(self, model: str, usage: dict[str, Any]) -> dict[str, Any]:
        """``usage.cost`` for a client that asked for it (x-shipway-include-cost)."""
        price = self._prices.get(model)
        prompt = int(usage.get("prompt_tokens") or 0)
        completion = int(usage.get("completion_tokens") or 0)
        inp = 0.0 if price is None else prompt * price.input / 1_000_000
        out = 0.0 if price is None else completion * price.output / 1_000_000
        return {
            "currency": self.currency,
            "input": round(inp, 10),
            "output": round(out, 10),
            "total": round(inp + out, 10),
        }

    def _chat_input(self, call: Call, request: ChatRequest) -> ChatRequest:
        """The input-limits stage: control characters, the prompt-size caps, the max_tokens
        cap."""
        check_control_characters(
            (f"messages[{index}].content", text) for index, text in message_texts(request.messages)
        )
        chars = _chars(request.messages)
        call.prompt_estimate = -(-chars // 4)
        self.costs.check_prompt(call, chars)
        return capped_max_tokens(
            request, self._max_tokens.get(call.model), call.principal.max_tokens, call.model
        )

    async def _admit(
        self, call: Call, prompt_chars: int, max_tokens: int | None, choices: int = 1
    ) -> Admission:
        """The rate-limit stage: one request and the tokens it may use, or 429."""
        if max_tokens is not None:
            max_tokens *= choices  # an upstream asked for `n` answers writes n of them
        tokens = self.limiter.estimate_tokens(
            call.principal, prompt_chars=prompt_chars, max_tokens=max_tokens
        )
        call.reserved_tokens = tokens
        admission = await self.limiter.admit(call.principal, tokens=tokens)
        for name, value in admission.headers():
            call.response_headers[name.decode()] = value.decode()
        return admission

    async def _guard_chat(self, call: Call, request: ChatRequest) -> ChatGuarding:
        guarding = await self.guards.check_chat(
            call.model, call.principal, request, log=call.log_fields
        )
        call.response_headers.update(guarding.headers)
        return guarding

    @staticmethod
    def _used_tokens(call: Call, answered: bool) -> int:
        """What to settle the token reservation with.

        Real usage when the backend reported it; nothing when there was no answer (refused,
        failed before any output); else (a stream cut off by the client or the deadline, an
        upstream that reports no usage) the whole reservation: a client must not make tokens
        free by hanging up before the usage chunk.
        """
        if call.prompt_tokens or call.completion_tokens:
            return call.prompt_tokens + call.completion_tokens
        return call.reserved_tokens if answered else 0

    @staticmethod
    def _usage(call: Call, answer: dict[str, Any]) -> None:
        """Token counts (and the backend's confidence, taken off the answer) onto the call."""
        usage = answer.get("usage")
        if usage is None and isinstance(answer.get("response"), dict):
            usage = answer["response"].get("usage")  # a Responses stream's final event
        if usage:
            call.prompt_tokens = int(usage.get("prompt_tokens") or usage.get("input_tokens") or 0)
            call.completion_tokens = int(
                usage.get("completion_tokens") or usage.get("output_tokens") or 0
            )
        if MEAN_LOGPROB in answer:
            call.confidence = answer.pop(MEAN_LOGPROB)

    # -- entry points -----------------------------------------------------------------------
    async def chat(
        self, call: Call, request: ChatRequest, dispatch: Dispatch | None = None
    ) -> dict[str, Any]:
        """The answer; ``dispatch``: how to reach the backend when not as a chat completion."""
        with self._accounted(call):
            request, admission = await self._chat_admitted(call, request)
            answered = False
            held = _Held()
            try:
                with _stage(call, "guard"):
                    guarding = await self._guard_chat(call, request)
                key = None if dispatch is not None else self.costs.cache_key(call, request)
                keyed_model = call.model
                if key is not None:
                    with _stage(call, "cache"):
                        cached = await self.costs.cache_lookup(call, key)
                    if cached is not None:
                        self._keep_content(call, request, cached)
                        return cached
                await self._reserve_budget(call, held)
                try:
                    async with _deadline(call):
                        with _stage(call, f"chat {call.model}", _genai(call, request)) as attrs:
                            result = await self.attempts.plain(
                                call,
                                (lambda backend: backend.chat(guarding.request))
                                if dispatch is None
                                else (lambda backend: dispatch(backend, guarding)),
                                # a request forwarded as sent has no fallbacks
                                None if dispatch is not None else self._switch(call, request, held),
                            )
                            if attrs is not None:
                                _genai_result(attrs, result)
                except Exception as failure:
                    # Every option failed: a stale cached answer, then the degraded reply.
                    stale = await self._stale(call, key, keyed_model, failure)
                    if stale is not None:
                        return stale
                    if isinstance(failure, Degraded):
                        return self._degraded(call, failure)
                    raise
                answered = True
                self._usage(call, result)
                result = guarding.restore_result(result)
                if key is not None and call.model == keyed_model:  # not a fallback's answer
                    await self.costs.cache_store(call, key, result)
                self._keep_content(call, request, result)
                return result
            finally:
                await admission.settle(self._used_tokens(call, answered))
                await held.budget.settle(self.costs.price(call))

    async def _chat_admitted(
        self, call: Call, request: ChatRequest
    ) -> tuple[ChatRequest, Admission]:
        """The stages before the guard: route choice, route, input limits, rate limit."""
        request = self._choose(call, request)
        # With fallbacks, an unavailable model is the dispatch stage's to route around.
        self._route(call, "chat", available=not self.attempts.has_fallbacks(call.model))
        request = self._chat_input(call, request)
        with _stage(call, "rate_limit"):
            admission = await self._admit(
                call, _chars(request.messages), request.max_tokens, _choices(request)
            )
        return request, admission

    async def _reserve_budget(self, call: Call, held: _Held) -> None:
        """The budget stage; a budget's fallback model re-routes the call."""
        if not self.costs.budgets_on:
            return
        model = call.model
        with _stage(call, "budget"):
            held.budget = await self.costs.reserve_budget(call, call.reserved_tokens)
        if call.model != model:  # the budget's fallback serves
            self._route(call, "chat", available=not self.attempts.has_fallbacks(call.model))

    def _switch(self, call: Call, request: ChatRequest, held: _Held) -> Switch:
        """May the call move to a fallback model? Only under the same guard policies (a
        redacting model's prompt must not reach one that would not redact), within that
        model's answer cap, and with its budget reserved (the asked model's released)."""
        guards = self.guards.policies(call.model, call.principal)

        async def switch(alias: str) -> bool:
            if self.guards.policies(alias, call.principal) != guards:
                return False
            cap = self._max_tokens.get(alias)
            if cap is not None and request.max_tokens is not None and request.max_tokens > cap:
                return False
            if not self.costs.budgets_on:
                return True
            await held.budget.settle(0)
            held.budget = NO_BUDGET
            asked, call.model = call.model, alias
            try:
                reservation = await self.costs.reserve_budget(
                    call, call.reserved_tokens, fallback=False
                )
            except BudgetExceeded:
                return False
            finally:
                call.model = asked
            held.budget = reservation
            return True

        return switch

    def _choose(self, call: Call, request: ChatRequest) -> ChatRequest:
        """A named route's model (and its generation defaults) for this request."""
        if self.costs.is_route(call.model):
            chosen = self.costs.choose_route(call, request, "chat")
            assert chosen is not None  # given a request, it returns one
            return chosen
        return request

    async def _stale(
        self, call: Call, key: Any, model: str, failure: Exception
    ) -> dict[str, Any] | None:
        """The request's answer from the cache past its TTL, when ``failure`` means no model
        could answer (not the client's own error, nor its deadline)."""
        if key is None:
            return None
        if not isinstance(failure, Degraded):
            reason = fallback_reason(failure)
            if reason is None or reason == "context_length":
                return None
        return await self.costs.cache_stale(call, key, model)

    def _degraded(self, call: Call, degraded: Degraded) -> dict[str, Any]:
        """Every option failed: the model's degraded reply, marked as such."""
        call.response_headers["x-shipway-degraded"] = "true"
        call.log_fields["degraded"] = True
        self.metrics.degraded.labels(degraded.model).inc()
        return {
            "id": f"chatcmpl-{call.request_id}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": call.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": degraded.reply},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        }

    def _keep_content(self, call: Call, request: ChatRequest, result: dict[str, Any]) -> None:
        if self.keep_content:
            call.audit_content = {
                "messages": request.messages,
                # a chat choice's message, or a text completion's text (upstream)
                "choices": [c.get("message", c.get("text")) for c in result.get("choices") or ()],
            }

    async def embed(self, call: Call, request: EmbedRequest) -> EmbedResult:
        with self._accounted(call):
            runner = self._route(call, "embeddings")
            check_control_characters(
                (f"input[{index}]", text) for index, text in enumerate(request.inputs)
            )
            chars = sum(map(len, request.inputs))
            call.prompt_estimate = -(-chars // 4)
            self.costs.check_prompt(call, chars)
            with _stage(call, "rate_limit"):
                admission = await self._admit(call, chars, 0)
            answered = False
            budget: Budget = NO_BUDGET
            try:
                with _stage(call, "guard"):
                    guarded = await self.guards.check_embed(
                        call.model, call.principal, request, log=call.log_fields
                    )
                if self.costs.budgets_on:
                    model = call.model
                    with _stage(call, "budget"):
                        budget = await self.costs.reserve_budget(call, call.prompt_estimate)
                    if call.model != model:
                        runner = self._route(call, "embeddings")
                async with _deadline(call):
                    with _stage(call, f"embeddings {call.model}", _genai(call)) as attrs:
                        if runner.batcher is not None:
                            result = await runner.batcher.embed(
                                guarded, call.priority, call.deadline
                            )
                        else:
                            async with runner.queue.lease(call.priority) as slot:
                                call.admitted_at = time.perf_counter()
                                result = await slot.backend.embed(guarded)
                        if attrs is not None:
                            attrs["gen_ai.usage.input_tokens"] = result.prompt_tokens
                answered = True
                call.prompt_tokens = result.prompt_tokens
                if self.keep_content:
                    call.audit_content = {"input": request.inputs}
                return result
            finally:
                await admission.settle(self._used_tokens(call, answered))
                await budget.settle(self.costs.price(call))

    async def stream(
        self, call: Call, request: ChatRequest, dispatch: StreamDispatch | None = None
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Yield chunks. Errors before the first chunk propagate before any byte is sent.

        The backend is drained by its own task into a buffer, so its slot (a worker, an
        upstream place) is given back the moment generation ends, however slowly the client
        reads; a client that stops reading is dropped by the HTTP layer's write timeout.
        Closing this generator (client gone) cancels the backend if it is still running.
        """
        with self._accounted(call):
            request, admission = await self._chat_admitted(call, request)
            held = _Held()
            try:
                with _stage(call, "guard"):
                    guarding = await self._guard_chat(call, request)
                key = None if dispatch is not None else self.costs.cache_key(call, request)
                keyed_model = call.model
                cached = None
                if key is not None:
                    with _stage(call, "cache"):
                        cached = await self.costs.cache_lookup(call, key)
                if cached is None:
                    await self._reserve_budget(call, held)
                degraded = None
                if cached is None:
                    try:
                        async with _deadline(call):
                            opened = await self.attempts.stream(
                                call,
                                (lambda backend: backend.stream(guarding.request))
                                if dispatch is None
                                else (lambda backend: dispatch(backend, guarding)),
                                None if dispatch is not None else self._switch(call, request, held),
                            )
                    except Exception as failure:
                        # Every option failed: a stale cached answer, then the degraded reply.
                        degraded = await self._stale(call, key, keyed_model, failure)
                        if degraded is None and isinstance(failure, Degraded):
                            degraded = self._degraded(call, failure)
                        if degraded is None:
                            raise
            except BaseException:
                await admission.settle(0)
                await held.budget.settle(0)
                raise
            if degraded is not None:
                cached = degraded  # not a cache hit, but replayed the same way
                await held.budget.settle(0)
            if cached is not None:  # a hit: replayed as the stream it was, no slot held
                await admission.settle(0)
                self._keep_content(call, request, cached)
                for chunk in replay_chunks(cached, include_usage=True):
                    if call.first_chunk_at is None and carries_output(chunk):
                        call.first_chunk_at = time.perf_counter()
                    yield chunk
                return
            buffer: asyncio.Queue[Any] = asyncio.Queue(_BUFFERED_CHUNKS)
            if self.keep_content:
                call.audit_content = {"messages": request.messages, "answer": ""}
            pump = asyncio.create_task(
                self._pump(
                    call,
                    opened.chunks,
                    guarding.request,
                    _Release(opened, admission, held),
                    guarding.stream_restorer(),
                    buffer,
                    None
                    if key is None or call.model != keyed_model  # not a fallback's answer
                    else (key, StreamAssembler(choices=_choices(request))),
                )
            )
            try:
                while (item := await buffer.get()) is not _END:
                    if isinstance(item, BaseException):
                        raise item
                    yield item
            finally:
                if not pump.done():
                    pump.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await pump

    async def _pump(
        self,
        call: Call,
        chunks: AsyncGenerator[dict[str, Any], None],
        request: ChatRequest,
        release: _Release,
        restorer: ChatStreamRestorer,
        buffer: asyncio.Queue[Any],
        caching: tuple[Any, StreamAssembler] | None,
    ) -> None:
        started, attrs = time.time_ns(), _genai(call, request)
        failure: BaseException | None = None
        try:
            async with _deadline(call):
                async for chunk in chunks:
                    if call.first_chunk_at is None and carries_output(chunk):
                        call.first_chunk_at = time.perf_counter()
                        self.metrics.time_to_first_token.labels(call.model).observe(
                            call.first_chunk_at - call.received_at
                        )
                    self._usage(call, chunk)
                    chunk = restorer.feed_chunk(chunk)
                    if call.audit_content is not None:
                        _keep_answer(call.audit_content, chunk)
                    if caching is not None:
                        caching[1].feed(chunk)
                    await buffer.put(chunk)
                    if attrs is not None:
                        _genai_result(attrs, chunk)
            tail = restorer.flush()
            if tail is not None:
                if caching is not None:
                    caching[1].feed(tail)
                await buffer.put(tail)
            await buffer.put(_END)
            if caching is not None and (whole := caching[1].completion()) is not None:
                await self.costs.cache_store(call, caching[0], whole)
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            failure = exc
            if attrs is not None:
                attrs["error.type"] = getattr(exc, "code", None) or type(exc).__name__
            await buffer.put(exc)
        finally:
            _record(call, f"chat {call.model}", started, attrs)
            await chunks.aclose()
            await release.opened.lease.__aexit__(None, None, None)
            release.opened.finish(failure)
            answered = call.first_chunk_at is not None
            await release.admission.settle(self._used_tokens(call, answered))
            await release.held.budget.settle(self.costs.price(call))


@dataclass(slots=True)
class _Release:
    """What a stream gives back when its backend is done: the slot, then the reservations."""

    opened: OpenStream
    admission: Admission
    held: _Held


@dataclass(slots=True)
class _Held:
    """The call's budget reservation, which a fallback may swap for its own model's."""

    budget: Budget = NO_BUDGET


def _per_output_token(call: Call) -> float:
    """After the first token for a stream; over the whole slot time for a plain call."""
    assert call.finished_at is not None and call.admitted_at is not None
    if call.first_chunk_at is not None and call.completion_tokens > 1:
        return (call.finished_at - call.first_chunk_at) / (call.completion_tokens - 1)
    return (call.finished_at - call.admitted_at) / call.completion_tokens


def _choices(request: ChatRequest) -> int:
    n = request.body.get("n")
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1


def _chars(messages: list[dict[str, Any]]) -> int:
    return sum(len(text) for _, text in message_texts(messages))


def _keep_answer(content: dict[str, Any], chunk: dict[str, Any]) -> None:
    if chunk.get("type") == "response.output_text.delta":  # a Responses event
        content["answer"] += str(chunk.get("delta") or "")
    for choice in chunk.get("choices") or ():
        text = (choice.get("delta") or {}).get("content") or choice.get("text")
        if text:
            content["answer"] += text


def _stage(call: Call, name: str, attributes: dict[str, Any] | None = None) -> Any:
    """A span for a stage when the call's trace is exported; else nothing at all."""
    trace = call.trace
    if trace is None or trace.stages is None:
        return contextlib.nullcontext(None)
    return trace.stage(name, attributes)


def _record(call: Call, name: str, start_ns: int, attributes: dict[str, Any] | None = None) -> None:
    trace = call.trace
    if trace is not None and trace.stages is not None:
        trace.add(name, start_ns, time.time_ns(), attributes or {})


def _genai(call: Call, request: ChatRequest | None = None) -> dict[str, Any] | None:
    """OpenTelemetry GenAI request attributes (only built when the trace is recorded)."""
    if call.trace is None or call.trace.stages is None:
        return None
    operation = "embeddings" if request is None else _operation(request)
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": operation,
        "gen_ai.request.model": call.model,
    }
    if request is not None:
        attrs["gen_ai.request.temperature"] = request.temperature
        attrs["gen_ai.request.top_p"] = request.top_p
        if request.max_tokens is not None:
            attrs["gen_ai.request.max_tokens"] = request.max_tokens
    return attrs


def _operation(request: ChatRequest) -> str:
    return "chat" if request.prompt is None else "text_completion"


def _genai_result(attrs: dict[str, Any], answer: dict[str, Any]) -> None:
    usage = answer.get("usage")
    if usage:
        attrs["gen_ai.usage.input_tokens"] = int(usage.get("prompt_tokens") or 0)
        attrs["gen_ai.usage.output_tokens"] = int(usage.get("completion_tokens") or 0)
    reasons = [c["finish_reason"] for c in answer.get("choices") or () if c.get("finish_reason")]
    if reasons:
        attrs["gen_ai.response.finish_reasons"] = reasons


class _deadline:
    """``asyncio.timeout_at(call.deadline)`` that raises ``DeadlineExceeded`` (504)."""

    def __init__(self, call: Call) -> None:
        self._call = call
        self._timeout = asyncio.timeout_at(call.deadline)

    async def __aenter__(self) -> None:
        await self._timeout.__aenter__()

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            await self._timeout.__aexit__(exc_type, exc, tb)
        except TimeoutError:
            raise DeadlineExceeded(
                f"the request did not finish within its deadline of {self._call.timeout_s:g}s "
                "(queue wait + generation); raise it with the `timeout` body field or the "
                "x-shipway-timeout header, or lower max_tokens",
                param="timeout",
            ) from None
