"""Prometheus metrics, held in one registry built at start-up (no module-level state)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["CallMetrics", "Metrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "shipway_requests_total",
            "Model calls by outcome.",
            ["model", "endpoint", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "shipway_request_duration_seconds",
            "Model call duration, admission to last byte.",
            ["model", "endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "shipway_time_to_first_token_seconds",
            "Streamed calls: time to the first chunk.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "shipway_tokens_total",
            "Tokens processed.",
            ["model", "kind"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "shipway_queue_depth",
            "Requests waiting for a slot.",
            ["model"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "shipway_queue_wait_seconds",
            "Time spent waiting for a slot.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_rejected = Counter(
            "shipway_queue_rejected_total",
            "Requests refused because the queue was full.",
            ["model"],
            registry=r,
        )
        self.worker_restarts = Counter(
            "shipway_worker_restarts_total",
            "Worker processes restarted after dying.",
            ["model"],
            registry=r,
        )
        self.http_responses = Counter(
            "shipway_http_responses_total",
            "Every HTTP response by route and status, including requests refused before "
            "they reach a model (bad JSON, schema errors, 404, 413 …).",
            ["path", "status"],
            registry=r,
        )
        self.connections_open = Gauge(
            "shipway_http_connections_open", "Client connections open now.", registry=r
        )
        self.connections_closed = Counter(
            "shipway_http_connections_closed_total",
            "Client connections Shipway closed itself, by reason (header_timeout, "
            "body_timeout, write_timeout, idle_timeout, headers_too_large, evicted_idle, "
            "refused_at_capacity).",
            ["reason"],
            registry=r,
        )
        self._per_call: dict[tuple[str, str], CallMetrics] = {}
        self.workers_up = Gauge(
            "shipway_workers_up",
            "Worker processes with their model loaded.",
            ["model"],
            registry=r,
        )

    def for_call(self, model: str, endpoint: str) -> CallMetrics:
        """The labelled children a call updates, looked up once per (model, endpoint)."""
        key = (model, endpoint)
        found = self._per_call.get(key)
        if found is None:
            found = self._per_call[key] = CallMetrics(self, model, endpoint)
        return found

    def render(self) -> bytes:
        return generate_latest(self.registry)


class CallMetrics:
    def __init__(self, metrics: Metrics, model: str, endpoint: str) -> None:
        self._requests = metrics.requests
        self._model, self._endpoint = model, endpoint
        self._by_status: dict[int, Any] = {}
        self.latency = metrics.latency.labels(model, endpoint)
        self.prompt_tokens = metrics.tokens.labels(model, "prompt")
        self.completion_tokens = metrics.tokens.labels(model, "completion")

    def finished(self, status: int) -> None:
        counter = self._by_status.get(status)
        if counter is None:
            counter = self._by_status[status] = self._requests.labels(
                self._model, self._endpoint, str(status)
            )
        counter.inc()
