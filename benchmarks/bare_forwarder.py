"""The floor for a Python gateway: one POST route that relays the body to an upstream.

Starlette under uvicorn (uvloop + httptools), one pooled client for the whole process, no
parsing, no queue, no logs. ``--client httpx`` swaps aiohttp for httpx.AsyncClient so the two
HTTP clients can be compared as proxy clients.

    python benchmarks/bare_forwarder.py --port 9200 --upstream http://127.0.0.1:9100
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

PATH = "/v1/chat/completions"
HEADERS = {"Content-Type": "application/json"}
MAX_CONNECTIONS = 100  # as Shipway's default `max_connections` for an upstream


def build_app(upstream: str, client: str) -> Starlette:
    url = upstream.rstrip("/") + PATH
    state: dict[str, Any] = {}

    async def forward_aiohttp(request: Request) -> Response:
        async with state["session"].post(url, data=await request.body()) as upstream_response:
            body = await upstream_response.read()
            status = upstream_response.status
        return Response(body, status_code=status, media_type="application/json")

    async def forward_httpx(request: Request) -> Response:
        upstream_response = await state["client"].post(url, content=await request.body())
        return Response(
            upstream_response.content,
            status_code=upstream_response.status_code,
            media_type="application/json",
        )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if client == "aiohttp":
            import aiohttp

            connector = aiohttp.TCPConnector(limit=MAX_CONNECTIONS, keepalive_timeout=30)
            async with aiohttp.ClientSession(connector=connector, headers=HEADERS) as session:
                state["session"] = session
                yield
        else:
            import httpx

            limits = httpx.Limits(max_connections=MAX_CONNECTIONS, keepalive_expiry=30)
            async with httpx.AsyncClient(limits=limits, headers=HEADERS, timeout=30) as http:
                state["client"] = http
                yield

    handler = forward_aiohttp if client == "aiohttp" else forward_httpx
    return Starlette(routes=[Route(PATH, handler, methods=["POST"])], lifespan=lifespan)


def main() -> None:
    parser = argparse.ArgumentParser(description="bare Starlette forwarder")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:9100")
    parser.add_argument("--client", choices=["aiohttp", "httpx"], default="aiohttp")
    args = parser.parse_args()
    uvicorn.run(
        build_app(args.upstream, args.client),
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
