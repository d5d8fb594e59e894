"""``shipway chaos proxy``: a reverse proxy that breaks requests on purpose, at set rates.

Put it between Shipway and a real upstream (point the model's ``base_url`` at it) to see
what the gateway does when the upstream misbehaves. Per request, at most one fault
(see chaos_faults.py): an error status with an OpenAI error body (nothing forwarded); a
stall (silence for ``stall_s``, then forwarded: a slow upstream the gateway's first-token
timeout should cut); a reset (the connection aborted with a TCP RST before any response); or
a cut (forwarded, then the connection closed after the first SSE event, or half a plain body).
Everything else is forwarded as is, streamed chunk by chunk, never buffered.

``GET /_chaos/stats`` gives the counts and rates; ``POST /_chaos/config`` with any subset of
the rates changes them at run time (say error_rate 1 then 0 to trip and heal a breaker).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import struct
from collections.abc import AsyncIterator

import aiohttp
import orjson
from aiohttp import web
from pydantic import ValidationError

from shipway.ops.chaos_faults import ChaosRates, ChaosStats, Fault, FaultPicker, explain

__all__ = ["ChaosProxy", "serve_proxy"]

# Hop-by-hop headers (RFC 9110 7.6.1) and the ones aiohttp sets itself from the body it sends.
_HOP = frozenset(
    [
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    ]
)


def _error(status: int, message: str, code: str) -> web.Response:
    body = {"error": {"message": message, "type": "chaos_error", "param": None, "code": code}}
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _reset(request: web.Request) -> None:
    """Abort the connection with an RST: linger on, timeout 0, so close() discards and resets."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class ChaosProxy:
    """One proxy: its target, its (changeable) rates, its counts and its upstream session."""

    def __init__(self, target: str, rates: ChaosRates, seed: int | None = None) -> None:
        self.target = target.rstrip("/")
        self.rates = rates
        self.stats = ChaosStats()
        self._picker = FaultPicker(seed)
        self._session: aiohttp.ClientSession | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.cleanup_ctx.append(self._client)
        app.router.add_get("/_chaos/stats", self._get_stats)
        app.router.add_post("/_chaos/config", self._set_config)
        app.router.add_route("*", "/{tail:.*}", self._proxy)
        return app

    async def _client(self, _app: web.Application) -> AsyncIterator[None]:
        # No pool limit and no timeout: the gateway in front owns both, the proxy must not.
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, auto_decompress=False
        ) as session:
            self._session = session
            yield

    async def _get_stats(self, _request: web.Request) -> web.Response:
        out = {**self.stats.as_dict(), "rates": self.rates.model_dump()}
        return web.Response(body=orjson.dumps(out), content_type="application/json")

    async def _set_config(self, request: web.Request) -> web.Response:
        try:
            patch = orjson.loads(await request.read())
            if not isinstance(patch, dict):
                raise TypeError("expected a JSON object of rates")
            self.rates = ChaosRates.model_validate({**self.rates.model_dump(), **patch})
        except ValidationError as exc:
            return _error(400, explain(exc), "invalid_chaos_config")
        except (orjson.JSONDecodeError, TypeError) as exc:
            return _error(400, str(exc), "invalid_chaos_config")
        out = orjson.dumps(self.rates.model_dump())
        return web.Response(body=out, content_type="application/json")

    async def _proxy(self, request: web.Request) -> web.StreamResponse:
        rates = self.rates
        body = await request.read()
        fault = self._picker.pick(rates)
        delay = self._picker.delay_s(rates) + (rates.stall_s if fault == "stall" else 0)
        self.stats.count(fault)
        if delay:
            await asyncio.sleep(delay)
        if fault == "reset":
            _reset(request)
            return web.Response()  # never sent: the connection is gone
        if fault == "error":
            return _error(rates.error_status, "injected by shipway chaos proxy", "chaos_fault")
        return await self._forward(request, body, fault)

    async def _forward(
        self, request: web.Request, body: bytes, fault: Fault | None
    ) -> web.StreamResponse:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        try:
            upstream = await self._session.request(
                request.method,
                self.target + request.raw_path,
                headers=headers,
                data=body or None,
                allow_redirects=False,
            )
        except (aiohttp.ClientError, OSError) as exc:
            self.stats.upstream_errors += 1
            return _error(502, f"chaos proxy cannot reach {self.target}: {exc}", "upstream_error")
        async with upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for key, value in upstream.headers.items():
                if key.lower() not in _HOP:
                    response.headers.add(key, value)
            if upstream.content_length is not None:
                response.content_length = upstream.content_length
            await response.prepare(request)
            try:
                if fault == "cut":
                    await self._cut(request, upstream, response)
                    return response
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
            except aiohttp.ClientError:
                # The target broke mid-body: the client must see a broken body, not a whole one.
                if request.transport is not None:
                    request.transport.close()
                return response
            await response.write_eof()
            return response

    @staticmethod
    async def _cut(
        request: web.Request, upstream: aiohttp.ClientResponse, response: web.StreamResponse
    ) -> None:
        """Send the first SSE event (or half a plain body), then close the connection."""
        if upstream.content_type == "text/event-stream":
            try:
                head = await upstream.content.readuntil(b"\n\n")
            except ValueError:  # a first event past aiohttp's line limit: cut inside it
                head = await upstream.content.readany()
        else:
            whole = await upstream.read()
            head = whole[: len(whole) // 2]
        await response.write(head)
        if request.transport is not None:
            request.transport.close()  # close() sends what is buffered first, then FIN


async def serve_proxy(proxy: ChaosProxy, host: str, port: int, report_s: float = 10.0) -> None:
    """Serve until SIGINT or SIGTERM; print the listen URL, then the counts every ``report_s``
    seconds (0: only at the end) when they changed."""
    runner = web.AppRunner(
        proxy.app(), access_log=None, handler_cancellation=True, shutdown_timeout=2
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0]
        rates = " ".join(f"{k}={v:g}" for k, v in proxy.rates.model_dump().items())
        print(f"chaos proxy on http://{host}:{bound[1]} -> {proxy.target} ({rates})", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        shown = proxy.stats.line()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), report_s or None)
            if proxy.stats.line() != shown and not stop.is_set():
                shown = proxy.stats.line()
                print(f"chaos proxy: {shown}", flush=True)
    finally:
        await runner.cleanup()
    print(f"chaos proxy stopped: {proxy.stats.line()}", flush=True)
