"""The floor for a Python gateway: one POST route that relays the body to an upstream.

Starlette under uvicorn (uvloop + httptools), one pooled client for the whole process, no
parsing, no queue, no logs. ``--client httpx`` swaps aiohttp for httpx.AsyncClient so the two
HTTP clients can be compared as proxy clients. ``--server`` swaps the HTTP server under the
same app, to choose Shipway's by measurement:

- ``httptools``: uvicorn with httptools (the floor every other row is compared with);
- ``h11``: uvicorn with h11 (pure Python; has a header size limit, no timeouts);
- ``shipway``: uvicorn with httptools through Shipway's protocol subclass, every limit and
  timeout on at its default (``shipway.api.http_protocol``);
- ``granian``: granian's Rust HTTP server over ASGI, one worker, one runtime thread
  (needs ``pip install granian``; not a Shipway dependency).

    python benchmarks/bare_forwarder.py --port 9200 --upstream http://127.0.0.1:9100
"""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
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


def granian_app() -> Starlette:
    """Granian imports its app by name; the upstream and client come through the environment."""
    return build_app(os.environ["BARE_UPSTREAM"], os.environ["BARE_CLIENT"])


def _shipway_protocol() -> type:
    from shipway.api.http_protocol import ConnectionLimits, protocol_class
    from shipway.config import ServerSettings
    from shipway.telemetry.metrics import Metrics

    limits = ConnectionLimits.from_settings(ServerSettings())
    return protocol_class(limits, Metrics())


def main() -> None:
    parser = argparse.ArgumentParser(description="bare Starlette forwarder")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:9100")
    parser.add_argument("--client", choices=["aiohttp", "httpx"], default="aiohttp")
    parser.add_argument(
        "--server", choices=["httptools", "h11", "shipway", "granian"], default="httptools"
    )
    args = parser.parse_args()
    if args.server == "granian":
        from granian.server import Server

        os.environ.update(BARE_UPSTREAM=args.upstream, BARE_CLIENT=args.client)
        Server(
            "bare_forwarder:granian_app",
            factory=True,
            address="127.0.0.1",
            port=args.port,
            interface="asgi",  # type: ignore[arg-type]
            loop="uvloop",  # type: ignore[arg-type]
            workers=1,
            runtime_threads=1,
            log_level="warning",  # type: ignore[arg-type]
            working_dir=Path(__file__).parent,
        ).serve()
        return
    http: Any = {"httptools": "httptools", "h11": "h11", "shipway": None}[args.server]
    uvicorn.run(
        build_app(args.upstream, args.client),
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http=http or _shipway_protocol(),
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
