"""The retry policy: which failures may be repeated, how long to wait, and a budget.

The budget is what keeps retries from multiplying the load on a backend that is already
failing: over any `budget_window_s`, a model's retries stay below `budget_ratio` of its
primary attempts plus a small allowance (`budget_min_retries`) so a quiet model can retry at
all. Once the budget is spent, a failure goes straight to the fallback chain or the client.

Which errors are safe to repeat follows from where they happened: before the backend took
the request (unreachable, a reset before the first byte), or where the backend said it failed
and nothing reached the client (5xx, 429, a crashed worker, a stalled first token). A
client's own mistake (4xx), the request's own deadline and the client going away are never
retried. The caller also never retries once a byte has gone to the client.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from shipway.config_resilience import RetrySettings
from shipway.errors import (
    BreakerOpen,
    ConcurrencyLimited,
    ContextLengthExceeded,
    FirstTokenTimeout,
    ModelUnavailable,
    QueueFull,
    UpstreamError,
    UpstreamUnhealthy,
    WorkerCrashed,
)
from shipway.resilience.window import SlidingCounts

__all__ = [
    "MAX_RETRY_AFTER_S",
    "RetryBudget",
    "counts_as_failure",
    "fallback_reason",
    "is_retryable",
]

MAX_RETRY_AFTER_S = 30.0
"""An upstream's ``Retry-After`` is honoured up to this; the caller still skips a retry whose
wait would pass the request's deadline."""

# UpstreamError kinds (set in backends/openai_http.py) that happened before the upstream
# produced an answer, or where it said itself that it failed.
_RETRYABLE_KINDS = frozenset({"unreachable", "broken", "rate_limited", "server_error", "timeout"})
# The upstream's fault but not worth repeating on the same model (its key is refused, its
# answer is malformed or too large, it sent an error event): another model may still serve.
_FAULT_KINDS = _RETRYABLE_KINDS | {"auth_failed", "bad_answer", "too_large", "error_event"}


class RetryBudget:
    """Per model: retries allowed while retries < ratio * requests + minimum, per window;
    and the wait before each."""

    __slots__ = ("_clock", "_counts", "_minimum", "_ratio", "settings")

    def __init__(self, settings: RetrySettings, clock: Callable[[], float]) -> None:
        self.settings = settings
        self._clock = clock
        self._ratio = settings.budget_ratio
        self._minimum = settings.budget_min_retries
        self._counts = SlidingCounts(settings.budget_window_s)  # a: requests, b: retries

    def note_request(self) -> None:
        """One primary attempt (not a retry, not a fallback's attempt on another model)."""
        self._counts.add(self._clock(), 1, 0)

    def try_spend(self) -> bool:
        """Take one retry from the budget, if it has one."""
        now = self._clock()
        requests, retries = self._counts.totals(now)
        if retries >= self._ratio * requests + self._minimum:
            return False
        self._counts.add(now, 0, 1)
        return True

    def backoff_s(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """The wait before retry number ``attempt`` (0 for the first retry): full jitter,
        uniform(0, min(backoff_max_s, backoff_base_s * 2^attempt)), so retries from many
        requests spread out instead of arriving together; at least the backend's
        ``Retry-After`` (up to ``MAX_RETRY_AFTER_S``) when it gave one."""
        settings = self.settings
        ceiling = min(settings.backoff_max_s, settings.backoff_base_s * 2.0 ** min(attempt, 60))
        delay = rng.uniform(0.0, ceiling)
        if retry_after is not None and retry_after > delay:
            delay = min(retry_after, MAX_RETRY_AFTER_S)
        return delay

    def snapshot(self) -> dict[str, int]:
        requests, retries = self._counts.totals(self._clock())
        return {"window_requests": requests, "window_retries": retries}


def is_retryable(error: BaseException) -> bool:
    """Whether repeating the same request on the same model may succeed and is safe (given
    that nothing has reached the client yet)."""
    if isinstance(error, UpstreamError):
        return error.kind in _RETRYABLE_KINDS
    return isinstance(error, WorkerCrashed | FirstTokenTimeout)


def counts_as_failure(error: BaseException) -> bool:
    """Whether an error is the backend's fault: it counts against the model's circuit
    breaker and tells the adaptive limit that the backend is struggling. The client's
    mistakes, its deadline and its going away say nothing about the backend, nor do refusals
    made before the backend was called (an open breaker, a full queue or limit)."""
    if isinstance(error, UpstreamError):
        return error.kind in _FAULT_KINDS
    if isinstance(error, BreakerOpen | UpstreamUnhealthy):
        return False
    return isinstance(error, ModelUnavailable | FirstTokenTimeout)


def fallback_reason(error: BaseException) -> str | None:
    """Why the request should move on to the next model of the fallback chain (a short label
    for logs and metrics), or None when another model would not help: the client's own
    mistake, its deadline, its going away. Call it once retries on this model are over.
    ``"context_length"``: only a model with a larger context may take it."""
    if isinstance(error, UpstreamError):
        if error.code == "context_length_exceeded":  # the upstream's own 400, passed through
            return "context_length"
        return error.kind if error.kind in _FAULT_KINDS else None
    if isinstance(error, BreakerOpen):
        return "circuit_open"
    if isinstance(error, UpstreamUnhealthy):
        return "unhealthy"
    if isinstance(error, WorkerCrashed):
        return "worker_crashed"
    if isinstance(error, ModelUnavailable):
        return "unavailable"
    if isinstance(error, FirstTokenTimeout):
        return "timeout"
    if isinstance(error, ConcurrencyLimited):
        return "overloaded"
    if isinstance(error, QueueFull):
        return "queue_full"
    if isinstance(error, ContextLengthExceeded):
        return "context_length"
    return None
