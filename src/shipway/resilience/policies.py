"""Every model's resilience, built once from the settings: what the dispatch stage consults.

``ModelPolicy`` holds one model's breaker, retry budget, adaptive limit, timeouts, fallback
chain, degraded reply and context size; ``Resilience`` holds them all, the health checker of
the upstreams, and the metrics of what they do (retries, fallbacks, breaker transitions,
health). State lives in this process: each replica keeps its own breakers and budgets, as
Envoy and Finagle do, so a replica reacts to what it sees without a round trip per call.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from shipway.config import LlamaCppModel, OpenAIUpstreamModel, ShipwaySettings
from shipway.config_resilience import ResilienceSettings
from shipway.resilience.adaptive_limit import AdaptiveLimit
from shipway.resilience.breaker import CircuitBreaker
from shipway.resilience.health import HealthChecker, HealthTarget
from shipway.resilience.retry import RetryBudget
from shipway.telemetry.metrics import Metrics

__all__ = ["ModelPolicy", "Resilience"]

_STATE_VALUE = {"closed": 0, "half_open": 1, "open": 2}


@dataclass(slots=True)
class ModelPolicy:
    alias: str
    settings: ResilienceSettings
    breaker: CircuitBreaker
    budget: RetryBudget
    limit: AdaptiveLimit
    fallbacks: tuple[str, ...]
    degraded_reply: str | None
    context: int | None
    """Context window in tokens (None: unknown), for context-length fallbacks."""
    attempt_timeout_s: float | None
    """A plain call's answer, or a stream's first output, must come within this."""
    total_timeout_s: float | None


class Resilience:
    def __init__(
        self,
        settings: ShipwaySettings,
        metrics: Metrics,
        secrets: Mapping[str, str],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._metrics = metrics
        self._log = structlog.get_logger("shipway.resilience")
        self.policies: dict[str, ModelPolicy] = {}
        targets: dict[str, HealthTarget] = {}
        for alias, model in settings.models.items():
            effective = model.resilience.over(settings.resilience)
            timeouts = effective.timeouts
            max_limit = model.max_concurrency if isinstance(model, OpenAIUpstreamModel) else 1024
            context = None
            if isinstance(model, LlamaCppModel):
                context = model.n_ctx
            elif isinstance(model, OpenAIUpstreamModel):
                context = model.context_length
            self.policies[alias] = ModelPolicy(
                alias=alias,
                settings=effective,
                breaker=CircuitBreaker(alias, effective.breaker, clock, self._transition),
                budget=RetryBudget(effective.retries, clock),
                limit=AdaptiveLimit(effective.adaptive_concurrency, max_limit, clock, model=alias),
                fallbacks=tuple(model.fallbacks),
                degraded_reply=model.degraded_reply,
                context=context,
                attempt_timeout_s=_smallest(timeouts.first_token_s, timeouts.total_s),
                total_timeout_s=timeouts.total_s,
            )
            metrics.breaker_state.labels(alias).set(0)
            if isinstance(model, OpenAIUpstreamModel) and effective.health_check.enabled:
                headers = {}
                key = secrets.get(model.api_key_env) if model.api_key_env else None
                if key:
                    headers["Authorization"] = f"Bearer {key}"
                targets[alias] = HealthTarget(model.base_url, effective.health_check, headers)
                metrics.upstream_healthy.labels(alias).set(1)
        self.health = HealthChecker(targets, self._health_changed, clock)

    async def start(self) -> None:
        await self.health.start()

    async def stop(self) -> None:
        await self.health.stop()

    def snapshot(self, alias: str) -> dict[str, Any]:
        """For /readyz: the breaker, the health checks, the adaptive limit, the retry budget."""
        policy = self.policies[alias]
        out: dict[str, Any] = {
            "breaker": policy.breaker.snapshot(),
            "retry_budget": policy.budget.snapshot(),
        }
        if policy.settings.adaptive_concurrency.enabled:
            out["adaptive_concurrency"] = policy.limit.snapshot()
        health = self.health.snapshot().get(alias)
        if health is not None:
            out["health"] = health
        if policy.fallbacks:
            out["fallbacks"] = list(policy.fallbacks)
        return out

    def note_retry(self, alias: str, reason: str) -> None:
        self._metrics.retries.labels(alias, reason).inc()

    def note_fallback(self, from_model: str, to_model: str, reason: str) -> None:
        self._metrics.fallbacks.labels(from_model, to_model, reason).inc()

    def _transition(self, model: str, old: str, new: str) -> None:
        self._metrics.breaker_transitions.labels(model, old, new).inc()
        self._metrics.breaker_state.labels(model).set(_STATE_VALUE.get(new, 0))
        log = self._log.warning if new == "open" else self._log.info
        log("circuit breaker", model=model, from_state=old, to_state=new)

    def _health_changed(self, alias: str, healthy: bool) -> None:
        self._metrics.upstream_healthy.labels(alias).set(1 if healthy else 0)
        log = self._log.info if healthy else self._log.warning
        log("upstream health", model=alias, healthy=healthy)


def _smallest(*values: float | None) -> float | None:
    present = [v for v in values if v is not None]
    return min(present) if present else None
