"""Wiring: build every service from the settings, compose the app, start and stop in order.

Nothing lives at module level: ``build_app`` creates the metrics registry, the engine (model
runners, worker supervisors, upstream sessions) and the pipeline, hands them to the routes,
and the lifespan starts them after the server binds and stops them after it drains.
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import math
import os
import resource
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import structlog
from starlette.applications import Starlette
from starlette.middleware import Middleware

from shipway.api.access import RouteAccess
from shipway.api.admin_routes import AdminRoutes
from shipway.api.completions_routes import CompletionRoutes
from shipway.api.errors import exception_handlers
from shipway.api.health import HealthRoutes
from shipway.api.http_protocol import ConnectionLimits, protocol_class
from shipway.api.middleware import RequestMiddleware
from shipway.api.openai_routes import OpenAIRoutes
from shipway.api.responses_routes import ResponsesRoutes
from shipway.backends.base import EmbedRequest
from shipway.batches import BatchService
from shipway.cache import ResponseCache
from shipway.config import GenerationDefaults, LlamaCppModel, OpenAIUpstreamModel, ShipwaySettings
from shipway.costs.attribution import CostLedger
from shipway.costs.budget_setup import build_budgets
from shipway.costs.routing import CostRouter
from shipway.dashboard.routes import DashboardRoutes
from shipway.engine.admission import Priority
from shipway.engine.engine import Engine
from shipway.errors import ConfigError
from shipway.pipeline import Pipeline
from shipway.pipeline.cost_stages import CostServices, CostStages
from shipway.resilience.policies import Resilience
from shipway.security.audit import AuditLog
from shipway.security.guard_stage import Guards
from shipway.security.key_service import build_key_service
from shipway.security.rate_limit import RateLimiter
from shipway.store import Database, build_counter
from shipway.store.spend import SpendStore
from shipway.telemetry.alerts import AlertEngine
from shipway.telemetry.cost_anomaly import spend_history_span
from shipway.telemetry.logging import AccessLog
from shipway.telemetry.metrics import Metrics
from shipway.telemetry.recent import RecentStats
from shipway.telemetry.spend_history import SpendHistory
from shipway.telemetry.tracing import Tracing

__all__ = ["build_app", "preflight", "run"]

# File descriptors kept back from client connections: worker pipes, upstream pools, logs.
_RESERVED_FDS = 256


def build_app(settings: ShipwaySettings) -> Starlette:
    log = structlog.get_logger("shipway.server")
    metrics = Metrics()
    engine = Engine(settings, metrics, secrets=os.environ)
    database = Database.from_settings(settings)
    counter = build_counter(settings)
    keys = build_key_service(settings, database, os.environ)
    audit = AuditLog(database, settings, os.environ)
    limiter = RateLimiter(counter, settings.rate_limits)
    guards = Guards(settings)
    tracing = Tracing(settings.telemetry.tracing, os.environ)
    recent = RecentStats(settings.telemetry.history_s)
    recent.add_gauges(engine.gauges)
    metrics.watch_engine(engine.gauges, engine.worker_pids)
    resilience = Resilience(settings, metrics, os.environ)
    spend_history = SpendHistory(spend_history_span(settings.alerts))
    alerts = AlertEngine(
        settings.alerts, recent, os.environ, registry=metrics.registry, spend=spend_history
    )
    spend = SpendStore(database)
    ledger = CostLedger(spend)
    budgets, budget_ledger = (
        build_budgets(settings, spend, alerts.announce) if settings.budgets.rules else (None, None)
    )
    cost_services = CostServices(
        cache=ResponseCache(
            settings, redis_url=settings.redis_url, embed=_embedder(settings, engine)
        ),
        budgets=budgets,
        router=CostRouter(
            settings,
            {alias: runner.capabilities for alias, runner in engine.runners.items()},
            p95_latency=lambda alias, window_s: recent.window(window_s, alias).latency_quantile(
                0.95
            ),
            available=lambda alias: engine.runners[alias].available,
        )
        if settings.routes
        else None,
        ledger=ledger,
        spend_history=spend_history,
    )
    pipeline = Pipeline(
        engine,
        metrics,
        settings,
        limiter,
        guards,
        recent,
        CostStages(settings, cost_services, metrics, _chat_defaults(settings)),
        resilience,
    )
    access = RouteAccess(keys, public_metrics=settings.auth.public_metrics)
    batches = BatchService(settings, database, pipeline, engine, keys)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await database.start()
        await counter.start()
        await audit.start()
        await guards.start()
        await tracing.start()
        await ledger.start()
        if budget_ledger is not None:
            await budget_ledger.start()
        if cost_services.cache is not None:
            await cost_services.cache.start()
        if not await keys.keys_exist():
            log.warning(
                "NO API KEYS: every model is open to anyone who can reach this address; "
                "make a key with `shipway keys create --name NAME --admin` and it applies "
                "at once",
                host=settings.server.host,
            )
        await engine.start()
        await resilience.start()
        await batches.start()  # resumes the batches left running
        # Everything built so far lives as long as the process: move it out of the cyclic
        # GC's sight so full collections stop re-walking it under load. A request allocates
        # a few hundred containers; collecting the young generation every 20,000 instead of
        # every 700 lets most of them die by refcount first (+10% requests/s at c=64,
        # docs/performance.md), for a few MB of cyclic garbage held a little longer.
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 50, 1000)
        ticker = asyncio.create_task(_tick_every_second(recent), name="recent-stats-ticker")
        await alerts.start()
        scheme = "https" if settings.server.ssl_certfile else "http"
        log.info("serving", host=settings.server.host, port=settings.server.port, scheme=scheme)
        try:
            yield
        finally:
            log.info("shutting down: stopping workers")
            ticker.cancel()
            await alerts.stop()
            await batches.stop()  # lines cut short stay pending, for the next start
            await resilience.stop()
            await engine.stop()
            await audit.stop()
            await ledger.stop()
            if budget_ledger is not None:
                await budget_ledger.close()
            if cost_services.cache is not None:
                await cost_services.cache.close()
            await tracing.stop()
            await counter.close()
            await database.stop()

    owned_by = {alias: model.owned_by for alias, model in settings.models.items()}
    owned_by.update({route: "shipway" for route in settings.routes})
    defaults = _chat_defaults(settings)
    max_tokens_limits = {alias: model.max_tokens_limit for alias, model in settings.models.items()}
    routes = [
        *OpenAIRoutes(pipeline, owned_by, settings.server.max_messages, access, defaults).routes(),
        *CompletionRoutes(pipeline, access, defaults, max_tokens_limits).routes(),
        *ResponsesRoutes(pipeline, settings.server.max_messages, access, defaults).routes(),
        *HealthRoutes(engine, metrics, access, resilience.snapshot).routes(),
        *AdminRoutes(
            keys, access, audit, spend=spend, currency=settings.telemetry.currency
        ).routes(),
        *batches.routes(),
    ]
    if settings.dashboard.enabled:
        dashboard = DashboardRoutes(
            recent, engine, access, currency=settings.telemetry.currency, alerts=alerts
        )
        routes += dashboard.routes()
    middleware = [
        Middleware(
            RequestMiddleware,
            access_log=AccessLog(settings.server.log_level, settings.server.log_format)
            if settings.server.access_log
            else None,
            max_body_bytes=settings.server.max_body_bytes,
            metrics=metrics,
            audit=audit,
            tracing=tracing,
            paths=frozenset(route.path for route in routes if "{" not in route.path),
            body_limits=batches.body_limits(),
        ),
    ]
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers=exception_handlers,
        lifespan=lifespan,
    )
    # A trailing-slash redirect would build its Location from the client's Host header.
    app.router.redirect_slashes = False
    app.state.engine = engine
    app.state.keys = keys
    app.state.pipeline = pipeline
    app.state.metrics = metrics
    app.state.recent = recent
    app.state.alerts = alerts
    return app


def _chat_defaults(settings: ShipwaySettings) -> dict[str, GenerationDefaults]:
    return {
        alias: model.defaults
        for alias, model in settings.models.items()
        if isinstance(model, LlamaCppModel | OpenAIUpstreamModel)
    }


def _embedder(
    settings: ShipwaySettings, engine: Engine
) -> Callable[[list[str]], Awaitable[list[list[float]]]] | None:
    """The semantic cache's "embed these texts", from the engine's embedding model."""
    semantic = settings.cache.semantic or any(
        model.cache.semantic for model in settings.models.values()
    )
    if not semantic:
        return None
    alias = settings.cache.embedding_model
    runner = engine.runners.get(alias)
    if runner is None or "embeddings" not in runner.capabilities:
        raise ConfigError(
            f"cache.embedding_model {alias!r} is not an embedding model under `models`; "
            "the semantic cache needs one"
        )

    async def embed(texts: list[str]) -> list[list[float]]:
        request = EmbedRequest(inputs=texts)
        deadline = asyncio.get_running_loop().time() + runner.queue_settings.timeout_s
        if runner.batcher is not None:
            result = await runner.batcher.embed(request, Priority.HIGH, deadline)
        else:
            async with asyncio.timeout_at(deadline), runner.queue.lease(Priority.HIGH) as slot:
                result = await slot.backend.embed(request)
        return [list(map(float, row)) for row in result.vectors]

    return embed


async def _tick_every_second(recent: RecentStats) -> None:
    """Gauges (queue depth, busy slots) are sampled each second even with no traffic."""
    while True:
        recent.tick()
        await asyncio.sleep(1.0)


def run(settings: ShipwaySettings) -> None:
    """Serve ``settings`` with uvicorn until SIGINT/SIGTERM, then drain and stop."""
    import uvicorn

    preflight(settings)
    app = build_app(settings)
    server = settings.server
    limits = ConnectionLimits.from_settings(server, _connection_cap(server.max_connections))
    uvicorn.run(
        app,
        host=server.host,
        port=server.port,
        loop="uvloop",
        http=protocol_class(limits, app.state.metrics),
        log_config=None,
        access_log=False,
        server_header=False,
        # Decisions never rest on X-Forwarded-* (a client can send any); and it costs.
        proxy_headers=False,
        timeout_keep_alive=server.keepalive_timeout_s,  # type: ignore[arg-type]
        timeout_graceful_shutdown=math.ceil(server.drain_timeout_s),
        ssl_certfile=server.ssl_certfile,
        ssl_keyfile=server.ssl_keyfile,
    )


def preflight(settings: ShipwaySettings) -> None:
    """Before binding: the store is reachable and migrated, Redis answers, and a server
    reachable from other machines has a key (unless told it may be open).

    Raises ``StoreUnavailable`` or ``ConfigError`` with one clear line, rather than a
    traceback from the lifespan. Once a key exists, every protected route needs one, wherever
    the server listens.
    """

    async def check() -> bool:
        database = Database.from_settings(settings)
        await database.start()
        try:
            counter = build_counter(settings)
            await counter.start()
            await counter.close()
            return await build_key_service(settings, database, os.environ).keys_exist()
        finally:
            await database.stop()

    keys_exist = asyncio.run(check())
    if keys_exist or settings.auth.insecure or _is_loopback(settings.server.host):
        return
    raise ConfigError(
        f"server.host {settings.server.host!r} is reachable from other machines and no "
        "API key exists, so anyone could use every model. Make a key first "
        "(`shipway keys create --name NAME --admin`), or serve on 127.0.0.1, or pass "
        "--insecure to serve it open anyway."
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere


def _connection_cap(wanted: int) -> int:
    """Raise the descriptor limit as far as allowed; keep the cap below it.

    Past the limit, accept() fails and every route, `/healthz` included, stops answering.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft == resource.RLIM_INFINITY:
        return wanted
    cap = min(wanted, max(16, soft - _RESERVED_FDS))
    if cap < wanted:
        structlog.get_logger("shipway.server").warning(
            "server.max_connections lowered to fit the file-descriptor limit",
            wanted=wanted,
            cap=cap,
            nofile_limit=soft,
        )
    return cap
