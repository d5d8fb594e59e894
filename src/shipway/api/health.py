"""Liveness, readiness (never behind a key; detail for operators) and the Prometheus scrape."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shipway.api.access import Access, RouteAccess
from shipway.engine.engine import Engine
from shipway.telemetry.metrics import Metrics

__all__ = ["HealthRoutes"]


class HealthRoutes:
    def __init__(
        self,
        engine: Engine,
        metrics: Metrics,
        access: RouteAccess,
        resilience: Callable[[str], dict[str, Any]] | None = None,
    ) -> None:
        """``resilience(alias)``: the model's breaker, health checks and limits for /readyz."""
        self.engine = engine
        self.metrics = metrics
        self.access = access
        self.resilience = resilience

    def routes(self) -> list[Route]:
        return [
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/readyz", self.readyz, methods=["GET"]),
            Route(
                "/metrics", self.access.protect(self.prometheus, Access.METRICS), methods=["GET"]
            ),
        ]

    async def healthz(self, request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    async def readyz(self, request: Request) -> Response:
        """Open to probes. The detail (model aliases, upstream URLs, file paths, pids, last
        errors) is for operators: shown when no key exists yet, else to an admin key only."""
        ready = self.engine.ready
        body: dict[str, object] = {"ready": ready}
        if await self.access.is_admin_or_open(request):
            models = self.engine.status()
            if self.resilience is not None:
                for alias, detail in models.items():
                    detail["resilience"] = self.resilience(alias)
            body["models"] = models
        return Response(
            orjson.dumps(body), status_code=200 if ready else 503, media_type="application/json"
        )

    async def prometheus(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type="text/plain; version=0.0.4")
