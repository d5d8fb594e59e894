"""The one place where errors become HTTP responses, in OpenAI's error envelope."""

from __future__ import annotations

import math

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from shipway.errors import MethodNotAllowed, NotFound, ShipwayError

__all__ = ["error_response", "exception_handlers"]


_ROUTES = (
    "POST /v1/chat/completions, POST /v1/responses, POST /v1/embeddings, GET /v1/models, "
    "GET /healthz, GET /readyz, GET /metrics"
)


def error_response(error: ShipwayError) -> Response:
    headers = {}
    if error.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    if isinstance(error, MethodNotAllowed):
        headers["Allow"] = error.allow
    if error.headers:
        headers.update(error.headers)
    return Response(
        orjson.dumps(error.to_dict()),
        status_code=error.status,
        media_type="application/json",
        headers=headers,
    )


async def _shipway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ShipwayError)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error_response(
            NotFound(f"no route {request.method} {request.url.path}; Shipway serves {_ROUTES}")
        )
    if exc.status_code == 405:
        # Starlette computes the route's methods into the Allow header (RFC 9110 §15.5.6).
        allow = (exc.headers or {}).get("Allow", "")
        return error_response(
            MethodNotAllowed(
                f"{request.method} is not allowed on {request.url.path}; use {allow}",
                allow=allow,
            )
        )
    error = ShipwayError(str(exc.detail))
    error.status = exc.status_code
    return error_response(error)


exception_handlers = {
    ShipwayError: _shipway_error,
    HTTPException: _http_error,
}
