"""The request path, as one ordered list of stages.

    route → admit (queue, priority, deadline) → dispatch (backend) → account (metrics)

Every request is one ``Call`` that flows through the stages. Later stages (authenticate,
rate-limit, guard, budget, cache …) slot in here, each a small function over the ``Call``;
their logic lives in their own packages and the pipeline only composes them.

Deadlines: the whole call — waiting in the queue and running — must finish before
``call.deadline`` (event-loop time). Running out cancels the backend call, which tells a
worker to stop generating, and raises ``DeadlineExceeded`` (504). A client that disconnects
cancels the task that runs the pipeline, with the same effect.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from shipway.backends.base import Backend, ChatRequest, EmbedRequest, EmbedResult
from shipway.engine.admission import Priority
from shipway.engine.engine import Engine, ModelRunner
from shipway.errors import DeadlineExceeded, InvalidRequest, ShipwayError
from shipway.telemetry.metrics import Metrics

__all__ = ["Call", "Pipeline", "carries_output"]

# Chunks a stream may run ahead of its client. A local model's whole answer fits (n_ctx
# tokens), so its worker is never held by a slow reader; an upstream past this waits.
_BUFFERED_CHUNKS = 8192
_END = object()


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
    def __init__(self, engine: Engine, metrics: Metrics) -> None:
        self.engine = engine
        self.metrics = metrics

    # -- stages ---------------------------------------------------------------------------
    def _route(self, call: Call, capability: str) -> ModelRunner:
        runner = self.engine.runner(call.model)
        if capability not in runner.capabilities:
            raise InvalidRequest(
                f"model {call.model!r} does not support {capability}; it supports "
                f"{', '.join(sorted(runner.capabilities))}",
                param="model",
                code="model_not_supported",
            )
        runner.check_available()
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

    def _usage(self, call: Call, usage: dict[str, Any] | None) -> None:
        if usage:
            call.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            call.completion_tokens = int(usage.get("completion_tokens") or 0)

    # -- entry points -----------------------------------------------------------------------
    async def chat(self, call: Call, request: ChatRequest) -> dict[str, Any]:
        with self._accounted(call):
            runner = self._route(call, "chat")
            async with _deadline(call), runner.queue.lease(call.priority) as slot:
                call.admitted_at = time.perf_counter()
                result = await slot.backend.chat(request)
            self._usage(call, result.get("usage"))
            return result

    async def embed(self, call: Call, request: EmbedRequest) -> EmbedResult:
        with self._accounted(call):
            runner = self._route(call, "embeddings")
            async with _deadline(call):
                if runner.batcher is not None:
                    result = await runner.batcher.embed(request, call.priority, call.deadline)
                else:
                    async with runner.queue.lease(call.priority) as slot:
                        call.admitted_at = time.perf_counter()
                        result = await slot.backend.embed(request)
            call.prompt_tokens = result.prompt_tokens
            return result

    async def stream(
        self, call: Call, request: ChatRequest
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Yield chunks. Errors before the first chunk propagate before any byte is sent.

        The backend is drained by its own task into a buffer, so its slot (a worker, an
        upstream place) is given back the moment generation ends, however slowly the client
        reads; a client that stops reading is dropped by the HTTP layer's write timeout.
        Closing this generator (client gone) cancels the backend if it is still running.
        """
        with self._accounted(call):
            runner = self._route(call, "chat")
            async with _deadline(call):
                lease = runner.queue.lease(call.priority)
                slot = await lease.__aenter__()
            call.admitted_at = time.perf_counter()
            buffer: asyncio.Queue[Any] = asyncio.Queue(_BUFFERED_CHUNKS)
            pump = asyncio.create_task(self._pump(call, slot.backend, request, lease, buffer))
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
        backend: Backend,
        request: ChatRequest,
        lease: Any,
        buffer: asyncio.Queue[Any],
    ) -> None:
        chunks = backend.stream(request)
        try:
            async with _deadline(call):
                async for chunk in chunks:
                    if call.first_chunk_at is None and carries_output(chunk):
                        call.first_chunk_at = time.perf_counter()
                        self.metrics.time_to_first_token.labels(call.model).observe(
                            call.first_chunk_at - call.received_at
                        )
                    self._usage(call, chunk.get("usage"))
                    await buffer.put(chunk)
            await buffer.put(_END)
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            await buffer.put(exc)
        finally:
            await chunks.aclose()
            await lease.__aexit__(None, None, None)


def carries_output(chunk: dict[str, Any]) -> bool:
    """A stream chunk with generated content, a finish reason or usage (not just a role)."""
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        if choice.get("finish_reason") or delta.get("content") or delta.get("tool_calls"):
            return True
    return bool(chunk.get("usage"))


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
