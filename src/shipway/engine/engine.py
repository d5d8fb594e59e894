"""The engine: one runner per model alias, each a bounded priority queue over its slots.

Local models (llama.cpp, sentence-transformers) get ``workers`` supervised worker processes,
each one slot. Upstream models get ``max_concurrency`` slots over one pooled HTTP backend.
The pipeline asks the engine for a runner by alias and leases a slot from its queue.
A model is ready while a worker serves it, and also while a worker that has loaded it before
is being restarted; only a model that has never loaded, or cannot load, makes /readyz 503.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Literal

import structlog

from shipway.backends.base import Backend
from shipway.backends.openai_http import OpenAIHTTPBackend
from shipway.config import (
    LlamaCppModel,
    ModelSettings,
    OpenAIUpstreamModel,
    SentenceTransformersModel,
    ShipwaySettings,
)
from shipway.engine.admission import AdmissionQueue
from shipway.engine.batcher import EmbeddingBatcher
from shipway.engine.worker_process import WorkerProcess
from shipway.errors import ConfigError, ModelNotFound, ModelUnavailable
from shipway.telemetry.metrics import Metrics

__all__ = ["Engine", "ModelRunner", "ModelState"]

ModelState = Literal["serving", "restarting", "loading", "failing", "stopped"]


class _UpstreamSlot:
    """One of an upstream's ``max_concurrency`` places; always ready when not leased."""

    def __init__(self, backend: OpenAIHTTPBackend) -> None:
        self._backend = backend

    @property
    def backend(self) -> Backend:
        return self._backend

    @property
    def ready(self) -> bool:
        return True


class ModelRunner:
    def __init__(
        self,
        alias: str,
        settings: ModelSettings,
        app_settings: ShipwaySettings,
        metrics: Metrics,
        secrets: Mapping[str, str],
    ) -> None:
        self.alias = alias
        self.settings = settings
        self.queue_settings = settings.queue.resolve(app_settings.queue)
        batched = isinstance(settings, SentenceTransformersModel)
        self.queue = AdmissionQueue(
            alias,
            # With a batcher in front, its dispatcher is the queue's only client.
            max_waiting=1 if batched else self.queue_settings.max_waiting,
            metrics=metrics,
            measured=not batched,
        )
        self.batcher: EmbeddingBatcher | None = None
        self.workers: list[WorkerProcess] = []
        self.upstream: OpenAIHTTPBackend | None = None
        self._tasks: list[asyncio.Task[None]] = []
        if isinstance(settings, OpenAIUpstreamModel):
            self.capabilities = frozenset({"chat", "embeddings"})
            key = None
            if settings.api_key_env:
                key = secrets.get(settings.api_key_env)
                if not key:
                    raise ConfigError(
                        f"models.{alias}.api_key_env: the environment variable "
                        f"{settings.api_key_env} is not set; export it before `shipway serve`"
                    )
            self.upstream = OpenAIHTTPBackend(alias, settings, key)
            self.queue.set_capacity(settings.max_concurrency)
            return
        spec: dict[str, Any]
        if isinstance(settings, LlamaCppModel):
            self.capabilities = frozenset({"chat"})
            spec = {"kind": "llamacpp", "n_ctx": settings.n_ctx, "n_batch": settings.n_batch}
        else:
            assert isinstance(settings, SentenceTransformersModel)
            self.capabilities = frozenset({"embeddings"})
            spec = {"kind": "sentence_transformers", "batch_size": settings.batch_size}
            self.batcher = EmbeddingBatcher(
                alias,
                self.queue,
                max_waiting=self.queue_settings.max_waiting,
                max_batch_inputs=settings.max_batch_inputs,
                metrics=metrics,
            )
        spec.update(path=str(settings.path) if settings.path else None, threads=settings.threads)
        self.workers = [
            WorkerProcess(
                model=alias,
                index=i,
                spec=spec,
                settings=app_settings.workers,
                on_idle=self.queue.offer,
                on_gone=self.queue.withdraw,
                metrics=metrics,
            )
            for i in range(settings.workers)
        ]
        self.queue.set_capacity(settings.workers)

    @property
    def state(self) -> ModelState:
        """``serving`` or ``restarting`` count as ready (for /readyz); the others do not."""
        workers = self.workers
        if self.upstream is not None or any(w.state in ("idle", "busy") for w in workers):
            return "serving"
        if all(w.state == "stopped" for w in workers):
            return "stopped"
        if all(w.failed_loads > 0 for w in workers):
            return "failing"
        # A worker being replaced (crash, kill after an ignored cancel) is a blip: queued
        # requests wait for it, so the model stays ready rather than taking the gateway out
        # of a load balancer's rotation along with every other model it serves.
        if any(w.has_loaded for w in workers):
            return "restarting"
        return "loading"

    @property
    def ready(self) -> bool:
        return self.state in ("serving", "restarting")

    @property
    def available(self) -> bool:
        """False when every worker fails to load the model (requests would only wait)."""
        return not (self.workers and all(w.failed_loads > 0 for w in self.workers))

    def check_available(self) -> None:
        """Fail fast when no worker can load the model, rather than queue until the deadline."""
        if not self.available:
            raise ModelUnavailable(
                f"model {self.alias!r} cannot be served: its workers fail to load it "
                f"({self.workers[0].last_error}); see GET /readyz",
                retry_after=30,
            )

    async def start(self) -> None:
        if self.upstream is not None:
            await self.upstream.start()
            for _ in range(self.upstream.settings.max_concurrency):
                self.queue.offer(_UpstreamSlot(self.upstream))
            return
        self._tasks = [
            asyncio.create_task(worker.run(), name=f"worker:{self.alias}:{worker.index}")
            for worker in self.workers
        ]

    @property
    def waiting(self) -> int:
        return self.batcher.waiting if self.batcher is not None else self.queue.waiting

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()
        await asyncio.gather(*(worker.stop() for worker in self.workers))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.upstream is not None:
            await self.upstream.close()

    def load(self) -> tuple[int, int, int]:
        """(requests waiting, slots busy, slots in all): workers or upstream places."""
        if self.workers:
            busy = sum(1 for worker in self.workers if worker.state == "busy")
            return self.waiting, busy, len(self.workers)
        assert isinstance(self.settings, OpenAIUpstreamModel)
        total = self.settings.max_concurrency
        return self.waiting, total - self.queue.idle, total

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ready": self.ready,
            "state": self.state,
            "backend": self.settings.backend,
            "capabilities": sorted(self.capabilities),
            "queue": {"waiting": self.waiting, "max_waiting": self.queue_settings.max_waiting},
        }
        if isinstance(self.settings, LlamaCppModel | OpenAIUpstreamModel):
            out["defaults"] = self.settings.defaults.model_dump(exclude_none=True)
        if self.workers:
            out["workers"] = [worker.status() for worker in self.workers]
        else:
            assert isinstance(self.settings, OpenAIUpstreamModel)
            out["upstream"] = self.settings.base_url
        return out


class Engine:
    def __init__(
        self, settings: ShipwaySettings, metrics: Metrics, secrets: Mapping[str, str]
    ) -> None:
        self.runners = {
            alias: ModelRunner(alias, model, settings, metrics, secrets)
            for alias, model in settings.models.items()
        }
        self._log = structlog.get_logger("shipway.engine")

    def runner(self, alias: str) -> ModelRunner:
        try:
            return self.runners[alias]
        except KeyError:
            raise ModelNotFound(
                f"The model {alias!r} does not exist. Models served here: "
                f"{', '.join(sorted(self.runners)) or '(none)'}; see GET /v1/models",
                param="model",
            ) from None

    async def start(self) -> None:
        for runner in self.runners.values():
            await runner.start()
        self._log.info("engine started", models=sorted(self.runners))

    async def stop(self) -> None:
        await asyncio.gather(*(runner.stop() for runner in self.runners.values()))

    @property
    def ready(self) -> bool:
        return all(runner.ready for runner in self.runners.values())

    def status(self) -> dict[str, Any]:
        return {alias: runner.status() for alias, runner in self.runners.items()}

    def worker_pids(self) -> dict[str, list[int | None]]:
        """Each model's worker process ids by worker index (None: not running)."""
        return {
            alias: [w.pid for w in runner.workers]
            for alias, runner in self.runners.items()
            if runner.workers
        }

    def gauges(self) -> dict[str, float]:
        """``<alias>.ready`` (1 or 0), ``.waiting``, ``.max_waiting``, ``.busy`` and ``.slots``
        for every model."""
        out: dict[str, float] = {}
        for alias, runner in self.runners.items():
            waiting, busy, total = runner.load()
            out[f"{alias}.ready"] = 1.0 if runner.ready else 0.0
            out[f"{alias}.waiting"] = waiting
            out[f"{alias}.max_waiting"] = runner.queue_settings.max_waiting
            out[f"{alias}.busy"] = busy
            out[f"{alias}.slots"] = total
        return out
