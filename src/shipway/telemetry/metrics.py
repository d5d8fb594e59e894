"""Prometheus metrics, held in one registry built at start-up (no module-level state)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["CallMetrics", "Metrics"]

# Up to queue.max_timeout_s's default (600 s): a long call still lands in a bucket.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_PER_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1)
# Minus the mean log-probability of an answer's tokens: 0 is certain, above 3 mostly guessing.
# Recorded positive so the histogram's _sum only grows (rate() reads a fall as a reset).
_UNCERTAINTY_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5)


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
            "Model call duration, from the call's start in the pipeline (after parsing and "
            "authentication) to its last byte.",
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
        self.cost = Counter(
            "shipway_cost",
            "What calls cost at their model's price (models.<alias>.price), in the currency "
            "of telemetry.currency.",
            ["model"],
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
        self.time_per_output_token = Histogram(
            "shipway_time_per_output_token_seconds",
            "Generation time per output token after the first (streams), or per token of the "
            "whole call (plain requests).",
            ["model"],
            buckets=_PER_TOKEN_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "shipway_inference_duration_seconds",
            "Time a call held its slot (a worker or an upstream place): the model's own time, "
            "without the queue wait.",
            ["model", "endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.uncertainty = Histogram(
            "shipway_answer_negative_mean_logprob",
            "Local chat answers' confidence: minus the mean log-probability of their tokens "
            "(0 = certain; higher = less sure).",
            ["model"],
            buckets=_UNCERTAINTY_BUCKETS,
            registry=r,
        )
        self.cache_requests = Counter(
            "shipway_cache_requests_total",
            "Chat requests by response-cache result: hit (exact or semantic), miss (looked up, "
            "not found), bypass (not cacheable, or the client asked to skip the cache).",
            ["model", "result"],
            registry=r,
        )
        self.cache_saved = Counter(
            "shipway_cache_saved",
            "What cache hits saved: the original calls' cost, in telemetry.currency.",
            ["model"],
            registry=r,
        )
        self.budget_rejections = Counter(
            "shipway_budget_exceeded_total",
            "Requests a hard budget limit refused or sent to its fallback model.",
            ["budget", "action"],
            registry=r,
        )
        self.retries = Counter(
            "shipway_retries_total",
            "Attempts repeated on the same model after a safe-to-retry failure, by reason.",
            ["model", "reason"],
            registry=r,
        )
        self.fallbacks = Counter(
            "shipway_fallbacks_total",
            "Calls moved on to the next model of a fallback chain, by reason.",
            ["from_model", "to_model", "reason"],
            registry=r,
        )
        self.breaker_transitions = Counter(
            "shipway_breaker_transitions_total",
            "Circuit breaker state changes.",
            ["model", "from_state", "to_state"],
            registry=r,
        )
        self.breaker_state = Gauge(
            "shipway_breaker_state",
            "Circuit breaker state: 0 closed, 1 half-open (probing), 2 open (failing fast).",
            ["model"],
            registry=r,
        )
        self.upstream_healthy = Gauge(
            "shipway_upstream_healthy",
            "1 while the upstream passes its background health checks, 0 out of rotation.",
            ["model"],
            registry=r,
        )
        self.degraded = Counter(
            "shipway_degraded_total",
            "Requests answered with the model's degraded reply because every option failed.",
            ["model"],
            registry=r,
        )
        self.upstream_errors = Counter(
            "shipway_upstream_errors_total",
            "Upstream calls that failed, by kind (unreachable, broken, rejected, rate_limited, "
            "auth_failed, server_error, too_large, error_event, bad_answer, timeout).",
            ["model", "kind"],
            registry=r,
        )
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes
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

    def watch_engine(
        self,
        gauges: Callable[[], Mapping[str, float]],
        worker_pids: Callable[[], Mapping[str, list[int | None]]],
    ) -> None:
        """Read slot and worker state at scrape time (no per-request cost)."""
        self.registry.register(_EngineCollector(gauges, worker_pids))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _EngineCollector(Collector):
    """Models' readiness, slots busy and in all, and their worker processes' CPU and memory."""

    def __init__(
        self,
        gauges: Callable[[], Mapping[str, float]],
        worker_pids: Callable[[], Mapping[str, list[int | None]]],
    ) -> None:
        self._gauges = gauges
        self._worker_pids = worker_pids
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._ticks = os.sysconf("SC_CLK_TCK")

    def collect(self) -> Iterator[Metric]:
        families = {
            "ready": GaugeMetricFamily(
                "shipway_model_ready", "1 when the model can serve requests.", labels=["model"]
            ),
            "busy": GaugeMetricFamily(
                "shipway_slots_busy",
                "Slots (workers, upstream places) serving a request now.",
                labels=["model"],
            ),
            "slots": GaugeMetricFamily(
                "shipway_slots", "Slots (workers, upstream places) in all.", labels=["model"]
            ),
        }
        for name, value in self._gauges().items():
            model, _, kind = name.rpartition(".")
            family = families.get(kind)
            if family is not None:
                family.add_metric([model], value)
        yield from families.values()
        memory = GaugeMetricFamily(
            "shipway_worker_resident_memory_bytes",
            "Resident memory of a worker process (worker = its index in the model's pool).",
            labels=["model", "worker"],
        )
        cpu = CounterMetricFamily(
            "shipway_worker_cpu_seconds",
            "CPU time of a worker process (a restarted worker starts again from 0, which "
            "rate() reads as a counter reset).",
            labels=["model", "worker"],
        )
        for model, pids in self._worker_pids().items():
            for index, pid in enumerate(pids):
                sample = None if pid is None else self._read(pid)
                if sample is not None:
                    memory.add_metric([model, str(index)], sample[0])
                    cpu.add_metric([model, str(index)], sample[1])
        yield memory
        yield cpu

    def _read(self, pid: int) -> tuple[float, float] | None:
        try:
            with open(f"/proc/{pid}/stat", "rb") as stat_file:
                fields = stat_file.read().rpartition(b")")[2].split()
        except OSError:
            return None  # gone, or not Linux
        # After the command name: state is fields[0], utime 11, stime 12, rss 21 (pages).
        return int(fields[21]) * self._page, (int(fields[11]) + int(fields[12])) / self._ticks


class CallMetrics:
    def __init__(self, metrics: Metrics, model: str, endpoint: str) -> None:
        self._requests = metrics.requests
        self._model, self._endpoint = model, endpoint
        self._by_status: dict[int, Any] = {}
        self.latency = metrics.latency.labels(model, endpoint)
        self.prompt_tokens = metrics.tokens.labels(model, "prompt")
        self.completion_tokens = metrics.tokens.labels(model, "completion")
        self.cost = metrics.cost.labels(model)
        self.inference = metrics.inference.labels(model, endpoint)
        self.per_output_token = metrics.time_per_output_token.labels(model)
        self.uncertainty = metrics.uncertainty.labels(model)

    def finished(self, status: int) -> None:
        counter = self._by_status.get(status)
        if counter is None:
            counter = self._by_status[status] = self._requests.labels(
                self._model, self._endpoint, str(status)
            )
        counter.inc()
