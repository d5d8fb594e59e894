"""``BatchService``: OpenAI's Files and Batches API, and the runner behind it, built as one.

``server.py`` builds it from the shared services, adds its routes, gives the request
middleware its larger body limit for uploads (``body_limits``), and starts it after the engine
(it resumes the batches left running) and stops it before (lines cut short stay pending).
"""

from __future__ import annotations

from starlette.routing import Route

from shipway.api.access import RouteAccess
from shipway.batches.batch_routes import BatchRoutes
from shipway.batches.executor import LineExecutor
from shipway.batches.file_routes import FileRoutes
from shipway.batches.owners import PrincipalCache
from shipway.batches.runner import BatchRunner
from shipway.batches.upload import FORM_OVERHEAD_BYTES
from shipway.config import ShipwaySettings
from shipway.engine.engine import Engine
from shipway.pipeline import Pipeline
from shipway.security.key_service import KeyService
from shipway.store import Database

__all__ = ["BatchService"]


class BatchService:
    def __init__(
        self,
        settings: ShipwaySettings,
        database: Database,
        pipeline: Pipeline,
        engine: Engine,
        keys: KeyService,
    ) -> None:
        self.settings = settings.batches
        access = RouteAccess(keys, public_metrics=settings.auth.public_metrics)
        self.runner = BatchRunner(
            database,
            LineExecutor(settings, pipeline, access),
            engine,
            PrincipalCache(database, settings.auth.key_cache_s, keys.keys_exist),
            concurrency=settings.batches.concurrency,
        )
        self._files = FileRoutes(database, access, settings.batches.max_file_bytes)
        self._batches = BatchRoutes(database, access, settings, engine, self.runner.wake)

    async def start(self) -> None:
        if self.settings.enabled:
            await self.runner.start()

    async def stop(self) -> None:
        if self.settings.enabled:
            await self.runner.stop()

    def routes(self) -> list[Route]:
        if not self.settings.enabled:
            return []
        return [*self._files.routes(), *self._batches.routes()]

    def body_limits(self) -> dict[str, tuple[int, str]]:
        """The request middleware's limit for uploads, in place of ``server.max_body_bytes``."""
        if not self.settings.enabled:
            return {}
        limit = self.settings.max_file_bytes + FORM_OVERHEAD_BYTES
        return {"/v1/files": (limit, "batches.max_file_bytes")}
