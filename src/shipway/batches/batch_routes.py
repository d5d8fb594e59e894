"""``/v1/batches``: create (the input file checked at once), retrieve, list, cancel.

A batch whose input file has a problem that would fail every run of a line (bad JSON, a wrong
url, a repeated ``custom_id``, a model the key cannot use, too many lines) is refused with a
400 naming the line, rather than created and left ``failed``: the client learns it from the
call it made. Such a batch never exists, so ``validating`` and ``failed`` (for validation)
are never shown; a created batch starts ``in_progress``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shipway.api.access import Access, Endpoint, RouteAccess
from shipway.api.http_input import read_json
from shipway.api.route_support import json_response, principal_of
from shipway.api.schemas import parse_body
from shipway.batches.file_routes import query_int, viewer_of
from shipway.batches.lines import ENDPOINTS, parse_input
from shipway.batches.views import batch_view, page_view
from shipway.config import ShipwaySettings
from shipway.engine.engine import Engine
from shipway.errors import InvalidRequest, NotFound
from shipway.security.principal import Principal
from shipway.store import Database
from shipway.store import batches as store
from shipway.store.batch_files import file_content, get_file

__all__ = ["BatchRoutes"]

_WINDOWS = {"24h": timedelta(hours=24)}


class _CreateBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    input_file_id: Annotated[str, Field(min_length=1)]
    endpoint: str
    completion_window: str
    # OpenAI's bounds: 16 pairs, keys up to 64 characters, values up to 512.
    metadata: (
        Annotated[
            dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]],
            Field(max_length=16),
        ]
        | None
    ) = None


class BatchRoutes:
    def __init__(
        self,
        database: Database,
        access: RouteAccess,
        settings: ShipwaySettings,
        engine: Engine,
        wake: Callable[[], None],
    ) -> None:
        self._db = database
        self._access = access
        self._engine = engine
        self._routes = frozenset(settings.routes)
        self._max_lines = settings.batches.max_lines
        self._wake = wake

    def routes(self) -> list[Route]:
        def user(endpoint: Endpoint) -> Endpoint:
            return self._access.protect(endpoint, Access.USER)

        return [
            Route("/v1/batches", user(self.create), methods=["POST"]),
            Route("/v1/batches", user(self.list), methods=["GET"]),
            Route("/v1/batches/{batch_id}", user(self.retrieve), methods=["GET"]),
            Route("/v1/batches/{batch_id}/cancel", user(self.cancel), methods=["POST"]),
        ]

    async def create(self, request: Request) -> Response:
        body = parse_body(_CreateBody, await read_json(request))
        if body.endpoint not in ENDPOINTS:
            raise InvalidRequest(
                f"endpoint {body.endpoint!r} is not supported for batches here; use one of "
                f"{', '.join(ENDPOINTS)}",
                param="endpoint",
            )
        window = _WINDOWS.get(body.completion_window)
        if window is None:
            raise InvalidRequest(
                f"completion_window must be one of {', '.join(_WINDOWS)}, not "
                f"{body.completion_window!r}",
                param="completion_window",
            )
        principal, viewer = principal_of(request), viewer_of(request)
        async with self._db.transaction() as session:
            source = await get_file(session, body.input_file_id, viewer)
            content = await file_content(session, body.input_file_id, viewer)
        if source is None or content is None:
            raise NotFound(f"No such File object: {body.input_file_id}", param="input_file_id")
        if source.purpose != "batch":
            raise InvalidRequest(
                f"file {source.id} has purpose {source.purpose!r}; a batch's input file must "
                "be uploaded with purpose `batch`",
                param="input_file_id",
            )
        lines = await asyncio.to_thread(
            parse_input,
            content,
            endpoint=body.endpoint,
            max_lines=self._max_lines,
            check_model=lambda model, needs: self._model_problem(principal, model, needs),
        )
        now = datetime.now(UTC)
        async with self._db.transaction() as session:
            batch = await store.create_batch(
                session,
                owner_key_id=principal.key_id,
                endpoint=body.endpoint,
                input_file_id=source.id,
                completion_window=body.completion_window,
                meta=body.metadata,
                lines=lines,
                at=now,
                expires_at=now + window,
            )
        self._wake()
        return json_response(batch_view(batch))

    def _model_problem(self, principal: Principal, model: str, needs: str) -> str | None:
        runner = self._engine.runners.get(model)
        if runner is None and model in self._routes:
            return None  # a named route: it picks a model that fits when the line runs
        if runner is None or not principal.may_use(model):
            visible = sorted(a for a in self._engine.runners if principal.may_use(a))
            return (
                f"model {model!r} does not exist or you do not have access to it; models you "
                f"may use: {', '.join(visible) or '(none)'}"
            )
        if needs not in runner.capabilities:
            return f"model {model!r} does not support {needs}"
        return None

    async def retrieve(self, request: Request) -> Response:
        batch_id = request.path_params["batch_id"]
        async with self._db.transaction() as session:
            batch = await store.get_batch(session, batch_id, viewer_of(request))
        if batch is None:
            raise _no_batch(batch_id)
        return json_response(batch_view(batch))

    async def list(self, request: Request) -> Response:
        async with self._db.transaction() as session:
            batches, has_more = await store.list_batches(
                session,
                viewer_of(request),
                limit=query_int(request, "limit", 20, 1, 100),
                after=request.query_params.get("after"),
            )
        return json_response(page_view([batch_view(b) for b in batches], has_more))

    async def cancel(self, request: Request) -> Response:
        batch_id = request.path_params["batch_id"]
        async with self._db.transaction() as session:
            batch = await store.request_cancel(
                session, batch_id, viewer_of(request), datetime.now(UTC)
            )
        if batch is None:
            raise _no_batch(batch_id)
        self._wake()
        return json_response(batch_view(batch))


def _no_batch(batch_id: str) -> NotFound:
    return NotFound(f"No such Batch object: {batch_id}", param="batch_id")
