"""The dispatch stage, made resilient: attempts, retries, fallbacks, degradation.

    for each model of [asked, *its fallbacks]:           (a context-length failure: only larger)
        health check passed? breaker allows? adaptive limit has room?   else: next model
        attempt: queue slot → backend, the answer (plain) or its first output (stream)
                 within timeouts.first_token_s / total_s           else: FirstTokenTimeout
        failed, safe to repeat, retries and budget left, time left → back off, same model
        failed otherwise → next model (if the failure is the backend's, not the client's)
    every option failed → the degraded reply (x-shipway-degraded), or 503 with Retry-After

A stream is retried only before its first output: the pipeline holds a stream until then, so
nothing has reached the client. Once an attempt has produced output it is the answer, and a
later failure ends the stream with an error event as before.

Breakers and adaptive limits hear of each attempt: a success when the answer (or a stream's
first output) arrives, a failure when the backend is at fault (``counts_as_failure``), and
nothing when the client left or was refused before the backend was reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shipway.backends.base import Backend
from shipway.engine.engine import Engine, ModelRunner
from shipway.errors import (
    ContextLengthExceeded,
    FirstTokenTimeout,
    ModelUnavailable,
    UpstreamError,
    UpstreamUnhealthy,
)
from shipway.pipeline.chunks import carries_output
from shipway.resilience.policies import ModelPolicy, Resilience
from shipway.resilience.retry import counts_as_failure, fallback_reason, is_retryable

if TYPE_CHECKING:
    from shipway.pipeline import Call

__all__ = ["Attempts", "Degraded", "OpenStream", "Switch"]

# Upstream failures that mean "too much load" (besides a first-token timeout and a 503).
_OVERLOAD_KINDS = frozenset({"timeout", "rate_limited", "unreachable", "broken"})

Send = Callable[[Backend], Awaitable[dict[str, Any]]]
Switch = Callable[[str], Awaitable[bool]]
"""Asked before a fallback model is tried: may the call move there (guards, caps, budget)?"""
Open = Callable[[Backend], AsyncGenerator[dict[str, Any], None]]


@dataclass(slots=True)
class OpenStream:
    """A stream whose attempt produced output: its slot, what came so far, and the rest."""

    lease: Any
    chunks: AsyncGenerator[dict[str, Any], None]
    policy: ModelPolicy
    started: float
    done: list[Callable[[BaseException | None], None]] = field(default_factory=list)

    def finish(self, error: BaseException | None) -> None:
        """The stream is over: the adaptive limit's place is given back, a failure counted."""
        for callback in self.done:
            callback(error)


@dataclass(slots=True)
class _Tries:
    """What happened so far, for the access log and the final error."""

    log: list[str] = field(default_factory=list)
    last: BaseException | None = None
    models: int = 0


class Attempts:
    def __init__(
        self,
        engine: Engine,
        resilience: Resilience,
        rng: random.Random | None = None,
    ) -> None:
        self._engine = engine
        self._resilience = resilience
        self._rng = rng or random.Random()

    def has_fallbacks(self, alias: str) -> bool:
        policy = self._resilience.policies.get(alias)
        return policy is not None and bool(policy.fallbacks)

    def chain(self, call: Call) -> list[str]:
        """The models to try, in order: the one asked for, then its fallbacks the caller may
        use and that serve chat."""
        policy = self._resilience.policies[call.model]
        out = [call.model]
        for alias in policy.fallbacks:
            runner = self._engine.runners.get(alias)
            if (
                runner is not None
                and call.principal.may_use(alias)
                and "chat" in runner.capabilities
            ):
                out.append(alias)
        return out

    async def plain(self, call: Call, send: Send, switch: Switch | None = None) -> dict[str, Any]:
        """The answer of the first model that gives one (``call.model`` becomes that model).

        ``switch(alias)`` is asked before a fallback is tried (its guards, caps and budget);
        None: no fallbacks and no degraded reply (a request forwarded as sent)."""
        result: dict[str, Any] = await self._run(
            call, lambda policy, runner: self._plain(call, policy, runner, send), switch
        )
        return result

    async def stream(self, call: Call, open_: Open, switch: Switch | None = None) -> OpenStream:
        """A stream that has produced its first output (or ended), from the first model
        that gives one."""
        opened: OpenStream = await self._run(
            call, lambda policy, runner: self._stream(call, policy, runner, open_), switch
        )
        return opened

    # -- the loop ---------------------------------------------------------------------------
    async def _run(
        self,
        call: Call,
        attempt: Callable[[ModelPolicy, ModelRunner], Awaitable[Any]],
        switch: Switch | None,
    ) -> Any:
        tries = _Tries()
        loop = asyncio.get_running_loop()
        chain = self.chain(call) if switch is not None else [call.model]
        asked = chain[0]
        for index, alias in enumerate(chain):
            policy = self._resilience.policies[alias]
            if index:
                reason = _reason(tries.last)
                if reason == "context_length" and not _larger(
                    policy, self._resilience.policies[call.model]
                ):
                    continue
                assert switch is not None
                if not await switch(alias):
                    tries.log.append(f"{alias}:skipped")
                    continue
                self._resilience.note_fallback(call.model, alias, reason)
                if call.requested_model is None:
                    call.requested_model = asked
                call.model = alias
                call.response_headers["x-shipway-served-by"] = alias
            runner = self._engine.runners[alias]
            tries.models += 1
            policy.budget.note_request()
            retry = 0
            while True:
                try:
                    result = await attempt(policy, runner)
                except (asyncio.CancelledError, GeneratorExit):
                    raise
                except Exception as error:
                    tries.last = error
                    tries.log.append(f"{alias}:{_label(error)}")
                    more = index < len(chain) - 1
                    delay = self._retry_delay(call, policy, error, retry, loop.time(), more)
                    if delay is not None:
                        self._resilience.note_retry(alias, _label(error))
                        await asyncio.sleep(delay)
                        retry += 1
                        continue
                    if fallback_reason(error) is None:
                        _log_tries(call, tries)
                        raise
                    break
                else:
                    if tries.log:
                        tries.log.append(f"{alias}:ok")
                        _log_tries(call, tries)
                    return result
        _log_tries(call, tries)
        return self._exhausted(call, asked, chain, tries, degrade=switch is not None)

    def _retry_delay(
        self,
        call: Call,
        policy: ModelPolicy,
        error: Exception,
        retry: int,
        now: float,
        more_models: bool,
    ) -> float | None:
        """The wait before repeating the attempt on this model, or None: do not."""
        if not is_retryable(error) or retry >= policy.settings.retries.max_retries:
            return None
        delay = policy.budget.backoff_s(retry, getattr(error, "retry_after", None), self._rng)
        if now + delay >= call.deadline:
            return None
        if more_models and delay > policy.settings.retries.backoff_max_s:
            return None  # a long Retry-After: another model answers sooner
        if not policy.budget.try_spend():
            return None
        return delay

    def _exhausted(
        self, call: Call, asked: str, chain: list[str], tries: _Tries, *, degrade: bool
    ) -> Any:
        """Every option failed: the degraded reply, else the failure (503 after a chain)."""
        assert tries.last is not None
        reply = self._resilience.policies[asked].degraded_reply
        client_fault = isinstance(tries.last, ContextLengthExceeded) or (
            _reason(tries.last) == "context_length"
        )
        if reply is not None and degrade and not client_fault and call.batch_id is None:
            call.model = asked  # the reply is the asked model's, not the last fallback's
            call.response_headers["x-shipway-served-by"] = asked
            raise Degraded(asked, reply)
        if tries.models <= 1 or client_fault:
            raise tries.last
        waits = [self._resilience.policies[alias].breaker.retry_after_s for alias in chain]
        raise ModelUnavailable(
            f"no model could answer: {', '.join(tries.log)} (model {asked!r} and its "
            "fallbacks); try again shortly",
            code="all_models_failed",
            retry_after=max(1.0, min(waits) if waits else 1.0),
        )

    # -- one attempt ------------------------------------------------------------------------
    def _admit(self, policy: ModelPolicy, runner: ModelRunner) -> None:
        """Refusals that need no backend: cannot load, out of rotation, breaker open, limit
        full."""
        runner.check_available()
        if not self._resilience.health.healthy(policy.alias):
            raise UpstreamUnhealthy(
                f"the upstream of model {policy.alias!r} fails its health checks and is out "
                "of rotation",
                retry_after=policy.settings.health_check.interval_s,
            )
        if not policy.breaker.allow():
            raise policy.breaker.open_error()
        if not policy.limit.try_acquire():
            policy.breaker.release_probe()
            raise policy.limit.limited_error()

    async def _plain(
        self, call: Call, policy: ModelPolicy, runner: ModelRunner, send: Send
    ) -> dict[str, Any]:
        self._admit(policy, runner)
        started = 0.0
        queued = time.time_ns()
        try:
            async with runner.queue.lease(call.priority) as slot:
                call.admitted_at = started = time.perf_counter()
                _queue_span(call, queued)
                # A plain answer's first token comes with its last: only `total_s` bounds it.
                async with _attempt_timeout(policy, policy.total_timeout_s):
                    result = await send(slot.backend)
        except BaseException as error:
            _failed(policy, error, started)
            raise
        finally:
            policy.limit.release()
        policy.breaker.record_success()
        policy.limit.on_done(None, True)
        return result

    async def _stream(
        self, call: Call, policy: ModelPolicy, runner: ModelRunner, open_: Open
    ) -> OpenStream:
        self._admit(policy, runner)
        started = 0.0
        queued = time.time_ns()
        lease = runner.queue.lease(call.priority)
        try:
            slot = await lease.__aenter__()
        except BaseException as error:
            policy.limit.release()
            _failed(policy, error, started)
            raise
        call.admitted_at = started = time.perf_counter()
        _queue_span(call, queued)
        chunks = open_(slot.backend)
        prefix: list[dict[str, Any]] = []
        try:
            async with _attempt_timeout(policy, policy.attempt_timeout_s):
                async for chunk in chunks:
                    prefix.append(chunk)
                    if carries_output(chunk):
                        break
        except BaseException as error:
            try:
                with contextlib.suppress(Exception):
                    await chunks.aclose()
            finally:
                try:
                    await lease.__aexit__(None, None, None)
                finally:
                    policy.limit.release()
                    _failed(policy, error, started)
            raise
        policy.breaker.record_success()
        policy.limit.on_done(time.perf_counter() - started, True)
        opened = OpenStream(lease, _chain(prefix, chunks), policy, started)
        opened.done.append(lambda error: _stream_ended(policy, error))
        return opened


class Degraded(Exception):
    """Every option failed and the model has a degraded reply: the pipeline answers it."""

    def __init__(self, model: str, reply: str) -> None:
        super().__init__(model)
        self.model = model
        self.reply = reply


def _queue_span(call: Call, queued_ns: int) -> None:
    """The wait for a slot, as the `queue` stage of an exported trace (each attempt's)."""
    trace = call.trace
    if trace is not None and trace.stages is not None:
        trace.add("queue", queued_ns, time.time_ns(), {})


def _failed(policy: ModelPolicy, error: BaseException, started: float) -> None:
    if isinstance(error, Exception) and counts_as_failure(error):
        policy.breaker.record_failure()
        if started and _overload(error):
            policy.limit.on_done(time.perf_counter() - started, False)
    else:
        policy.breaker.release_probe()


def _overload(error: Exception) -> bool:
    """A failure that says the backend is overloaded (what the adaptive limit reacts to)."""
    if isinstance(error, FirstTokenTimeout):
        return True
    if isinstance(error, UpstreamError):
        return error.kind in _OVERLOAD_KINDS or (
            error.kind == "server_error" and error.status == 503
        )
    return False


def _stream_ended(policy: ModelPolicy, error: BaseException | None) -> None:
    policy.limit.release()
    if isinstance(error, Exception) and counts_as_failure(error):
        policy.breaker.record_failure()


async def _chain(
    prefix: list[dict[str, Any]], rest: AsyncGenerator[dict[str, Any], None]
) -> AsyncGenerator[dict[str, Any], None]:
    try:
        for chunk in prefix:
            yield chunk
        async for chunk in rest:
            yield chunk
    finally:
        await rest.aclose()


class _attempt_timeout:
    """``asyncio.timeout`` that raises ``FirstTokenTimeout`` (retried, failed over) rather
    than a bare TimeoutError; no timer at all when the model sets none."""

    __slots__ = ("_policy", "_seconds", "_timeout")

    def __init__(self, policy: ModelPolicy, seconds: float | None) -> None:
        self._policy = policy
        self._seconds = seconds
        self._timeout = None if seconds is None else asyncio.timeout(seconds)

    async def __aenter__(self) -> None:
        if self._timeout is not None:
            await self._timeout.__aenter__()

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._timeout is None:
            return
        try:
            await self._timeout.__aexit__(exc_type, exc, tb)
        except TimeoutError:
            raise FirstTokenTimeout(
                f"model {self._policy.alias!r} produced no output within "
                f"{self._seconds:g}s (resilience.timeouts)"
            ) from None


def _label(error: BaseException) -> str:
    reason = fallback_reason(error)
    if reason is not None:
        return reason
    return getattr(error, "code", None) or type(error).__name__


def _reason(error: BaseException | None) -> str:
    return "unknown" if error is None else (fallback_reason(error) or _label(error))


def _larger(candidate: ModelPolicy, current: ModelPolicy) -> bool:
    """A context-length failure moves only to a model known to hold more."""
    if candidate.context is None:
        return False
    return current.context is None or candidate.context > current.context


def _log_tries(call: Call, tries: _Tries) -> None:
    if tries.log:
        call.log_fields["attempts"] = ",".join(tries.log)
