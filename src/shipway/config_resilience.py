"""Typed settings for resilience: timeouts, retries, circuit breakers, health checks, adaptive
concurrency, fallbacks and the degraded reply.

The top-level `resilience` block holds the defaults for every model; a model's own block
(`models.<alias>.resilience`) replaces a sub-block whole (`timeouts`, `retries`, …), so what
a model does is always readable in one place. `fallbacks` and `degraded_reply` are per model.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AdaptiveConcurrencySettings",
    "BreakerSettings",
    "HealthCheckSettings",
    "ResilienceOverrides",
    "ResilienceSettings",
    "RetrySettings",
    "TimeoutSettings",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TimeoutSettings(_Strict):
    """Per attempt; the request's own deadline (`timeout`) always wins."""

    first_token_s: float | None = Field(
        30.0,
        gt=0,
        description="A stream attempt that produces no output within this is abandoned: "
        "retried, failed over, or a 504 `upstream_timeout`.",
    )
    total_s: float | None = Field(
        None,
        gt=0,
        description="A plain (non-streamed) attempt's whole answer, whose first token comes "
        "with its last, must come within this (and a stream's first output too); unset: "
        "only the request's deadline bounds a plain attempt.",
    )


class RetrySettings(_Strict):
    """Retries of failures that are safe to repeat, before any byte reached the client."""

    max_retries: int = Field(
        2, ge=0, le=10, description="Retries per model after the first attempt (0: none)."
    )
    backoff_base_s: float = Field(
        0.05, gt=0, description="The first retry waits up to this (full jitter), then doubles."
    )
    backoff_max_s: float = Field(2.0, gt=0, description="The longest wait between attempts.")
    budget_ratio: float = Field(
        0.2,
        ge=0,
        le=1,
        description="Retries may be at most this share of the model's requests over the "
        "last `budget_window_s` (a retry storm cannot multiply the load on a failing "
        "backend).",
    )
    budget_window_s: float = Field(10.0, gt=0, description="The retry budget's window.")
    budget_min_retries: int = Field(
        3,
        ge=0,
        description="Retries always allowed per window, so a quiet model can still retry.",
    )


class BreakerSettings(_Strict):
    """A circuit breaker per model: fail fast (or fall back) while the backend is failing."""

    enabled: bool = Field(True, description="Use a circuit breaker for this model.")
    consecutive_failures: int = Field(
        5, ge=1, description="Opens after this many failures in a row."
    )
    failure_rate: float = Field(
        0.5, gt=0, le=1, description="Opens when this share of calls in `window_s` failed…"
    )
    min_calls: int = Field(20, ge=1, description="…and the window holds at least this many calls.")
    window_s: float = Field(30.0, gt=0, description="The failure rate's window.")
    cooldown_s: float = Field(
        5.0,
        gt=0,
        description="While open, one probe call is let through each cooldown (half-open); "
        "its success closes the breaker.",
    )


class HealthCheckSettings(_Strict):
    """Background probes of an upstream (`GET {base_url}/models`); local models have none."""

    enabled: bool = Field(True, description="Probe the upstream in the background.")
    interval_s: float = Field(10.0, gt=0, description="Time between probes.")
    timeout_s: float = Field(2.0, gt=0, description="A probe slower than this failed.")
    unhealthy_after: int = Field(
        3, ge=1, description="Failed probes in a row that take it out of rotation."
    )
    healthy_after: int = Field(1, ge=1, description="Successful probes in a row that put it back.")


class AdaptiveConcurrencySettings(_Strict):
    """A concurrency limit for an upstream that follows its latency (AIMD)."""

    enabled: bool = Field(
        False,
        description="Limit requests in flight to the upstream below `max_concurrency`, "
        "shrinking when its latency rises above `latency_tolerance` times its best recent "
        "latency and growing by one while it stays fast.",
    )
    min_limit: int = Field(1, ge=1, description="The limit never goes below this.")
    latency_tolerance: float = Field(
        2.0, gt=1, description="Latency above this multiple of the baseline is congestion."
    )
    backoff_ratio: float = Field(
        0.9, gt=0, lt=1, description="On congestion the limit is multiplied by this."
    )


class ResilienceSettings(_Strict):
    """Defaults for every model (each may replace a block under `models.<alias>.resilience`)."""

    timeouts: TimeoutSettings = Field(
        default_factory=TimeoutSettings, description="Per-attempt timeouts."
    )
    retries: RetrySettings = Field(default_factory=RetrySettings, description="Retries.")
    breaker: BreakerSettings = Field(
        default_factory=BreakerSettings, description="The circuit breaker."
    )
    health_check: HealthCheckSettings = Field(
        default_factory=HealthCheckSettings, description="Upstream health probes."
    )
    adaptive_concurrency: AdaptiveConcurrencySettings = Field(
        default_factory=AdaptiveConcurrencySettings,
        description="Latency-driven concurrency limit for upstreams.",
    )


class ResilienceOverrides(_Strict):
    """A model's own blocks; an unset block is the top-level `resilience` one."""

    timeouts: TimeoutSettings | None = Field(None, description="See `resilience.timeouts`.")
    retries: RetrySettings | None = Field(None, description="See `resilience.retries`.")
    breaker: BreakerSettings | None = Field(None, description="See `resilience.breaker`.")
    health_check: HealthCheckSettings | None = Field(
        None, description="See `resilience.health_check`."
    )
    adaptive_concurrency: AdaptiveConcurrencySettings | None = Field(
        None, description="See `resilience.adaptive_concurrency`."
    )

    def over(self, defaults: ResilienceSettings) -> ResilienceSettings:
        """The effective settings: this model's blocks where set, else the defaults."""
        return ResilienceSettings(
            timeouts=self.timeouts or defaults.timeouts,
            retries=self.retries or defaults.retries,
            breaker=self.breaker or defaults.breaker,
            health_check=self.health_check or defaults.health_check,
            adaptive_concurrency=self.adaptive_concurrency or defaults.adaptive_concurrency,
        )
