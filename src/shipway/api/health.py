"""Liveness, readiness (never behind a key) and the Prometheus scrape endpoint."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shipway.api.access import Access, RouteAccess
from shipway.engine.engine import Engine
from shipway.telemetry.metrics import Metrics

__all__ = ["HealthRoutes"]


class HealthRoutes:
    def __init__(self, engine: Engine, metrics: Metrics, access: RouteAccess) -> None:
        self.engine = engine
        self.metrics = metrics
        self.access = access

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
        ready = self.engine.ready
        body = {"ready": ready, "models": self.engine.status()}
        return Response(
            orjson.dumps(body), status_code=200 if ready else 503, media_type="application/json"
        )

    async def prometheus(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type="text/plain; version=0.0.4")
