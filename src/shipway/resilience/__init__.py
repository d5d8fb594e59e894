"""Resilience around the dispatch stage: circuit breaker, retry policy and budget, adaptive
concurrency limit, upstream health checks. Pure asyncio, per model, clocks injected."""
