"""``/v1/files``: upload (multipart, purpose ``batch``), list, retrieve, content, delete.

A key sees only the files it uploaded and the outputs of its batches; an admin key sees all;
on an open server (no key made yet) everything is the anonymous caller's.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shipway.api.access import Access, Endpoint, RouteAccess
from shipway.api.route_support import json_response, principal_of
from shipway.batches.upload import read_upload
from shipway.batches.views import file_view, page_view
from shipway.errors import InvalidRequest, NotFound
from shipway.store import Database
from shipway.store.batch_files import (
    Viewer,
    create_file,
    delete_file,
    file_content,
    get_file,
    list_files,
)

__all__ = ["FileRoutes", "query_int", "viewer_of"]

_MAX_LIST = 10_000


def viewer_of(request: Request) -> Viewer:
    principal = principal_of(request)
    return Viewer(principal.key_id, principal.admin)


def query_int(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise InvalidRequest(
            f"{name} must be a whole number from {low} to {high}, not {raw[:32]!r}", param=name
        )
    return int(raw)


def _no_file(file_id: str) -> NotFound:
    return NotFound(f"No such File object: {file_id}", param="file_id")


class FileRoutes:
    def __init__(self, database: Database, access: RouteAccess, max_file_bytes: int) -> None:
        self._db = database
        self._access = access
        self._max_file_bytes = max_file_bytes

    def routes(self) -> list[Route]:
        def user(endpoint: Endpoint) -> Endpoint:
            return self._access.protect(endpoint, Access.USER)

        return [
            Route("/v1/files", user(self.upload), methods=["POST"]),
            Route("/v1/files", user(self.list), methods=["GET"]),
            Route("/v1/files/{file_id}", user(self.retrieve), methods=["GET"]),
            Route("/v1/files/{file_id}", user(self.delete), methods=["DELETE"]),
            Route("/v1/files/{file_id}/content", user(self.content), methods=["GET"]),
        ]

    async def upload(self, request: Request) -> Response:
        upload = await read_upload(request, self._max_file_bytes)
        async with self._db.transaction() as session:
            record = await create_file(
                session,
                owner_key_id=principal_of(request).key_id,
                purpose=upload.purpose,
                filename=upload.filename,
                content=upload.content,
                at=datetime.now(UTC),
            )
        return json_response(file_view(record))

    async def list(self, request: Request) -> Response:
        order = request.query_params.get("order", "desc")
        if order not in ("asc", "desc"):
            raise InvalidRequest(f"order must be asc or desc, not {order[:32]!r}", param="order")
        sort: Literal["asc", "desc"] = "asc" if order == "asc" else "desc"
        async with self._db.transaction() as session:
            records, has_more = await list_files(
                session,
                viewer_of(request),
                limit=query_int(request, "limit", _MAX_LIST, 1, _MAX_LIST),
                after=request.query_params.get("after"),
                purpose=request.query_params.get("purpose"),
                order=sort,
            )
        return json_response(page_view([file_view(r) for r in records], has_more))

    async def retrieve(self, request: Request) -> Response:
        file_id = request.path_params["file_id"]
        async with self._db.transaction() as session:
            record = await get_file(session, file_id, viewer_of(request))
        if record is None:
            raise _no_file(file_id)
        return json_response(file_view(record))

    async def content(self, request: Request) -> Response:
        file_id = request.path_params["file_id"]
        async with self._db.transaction() as session:
            data = await file_content(session, file_id, viewer_of(request))
        if data is None:
            raise _no_file(file_id)
        return Response(data, media_type="application/jsonl")

    async def delete(self, request: Request) -> Response:
        file_id = request.path_params["file_id"]
        async with self._db.transaction() as session:
            deleted = await delete_file(session, file_id, viewer_of(request))
        if not deleted:
            raise _no_file(file_id)
        return json_response({"id": file_id, "object": "file", "deleted": True})
