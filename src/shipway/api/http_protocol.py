"""HTTP/1.1 connections: uvicorn's httptools protocol with the limits it lacks.

uvicorn on httptools is the fastest Python HTTP/1.1 server we measured (docs/performance.md),
but on its own it keeps a connection that sends nothing or half a header block forever,
accepts a header block of any size, waits forever for a body that never ends or a client
that never reads, accepts connections until file descriptors run out, and frames a streamed
answer to an HTTP/1.0 client with chunked encoding (which RFC 9112 forbids). This subclass
adds, per connection, with the numbers from ``server.*`` settings:

- a header block over ``max_header_bytes`` → 431 and the connection closes;
- no complete header block within ``header_timeout_s`` of connecting or of a request's first
  byte → 408 (closed silently if nothing was sent at all);
- a body not complete within ``body_timeout_s`` of its headers → 408; the app sees the
  client disconnect and the route stops (``ClientClosedRequest``);
- a response the client stops reading (the transport's write buffer stays over its high-water
  mark) for ``write_timeout_s`` → the connection is aborted; the app sees a disconnect;
- at ``max_connections`` the connection idle the longest (no request in progress) is closed
  to make room, so a flood of silent sockets cannot lock out real clients; with none idle the
  newcomer gets 503;
- an HTTP/1.0 response without a length is close-delimited (RFC 9112 §6.3).

The timers are armed only when a request's bytes span more than one read, so a request that
arrives in one packet (nearly all of them) costs a few attribute checks. This builds on
uvicorn internals (``HttpToolsProtocol``'s callbacks and ``RequestResponseCycle``); the
uvicorn version range in pyproject.toml is the one these tests pass on.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson
import structlog
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from shipway.config import ServerSettings
from shipway.errors import HeadersTooLarge, RequestTimeout, ShipwayError, TooManyConnections
from shipway.telemetry.metrics import Metrics

__all__ = ["ConnectionLimits", "protocol_class"]


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    max_header_bytes: int
    header_timeout_s: float
    body_timeout_s: float
    write_timeout_s: float
    max_connections: int

    @classmethod
    def from_settings(
        cls, server: ServerSettings, max_connections: int | None = None
    ) -> ConnectionLimits:
        """``max_connections`` overrides the setting (server.py fits it under the fd limit)."""
        return cls(
            max_header_bytes=server.max_header_bytes,
            header_timeout_s=server.header_timeout_s,
            body_timeout_s=server.body_timeout_s,
            write_timeout_s=server.write_timeout_s,
            max_connections=max_connections or server.max_connections,
        )


class _Registry:
    """The server's idle connections, longest idle first (a dict keeps insertion order)."""

    def __init__(self) -> None:
        self.idle: dict[ShipwayHttpProtocol, None] = {}


def protocol_class(limits: ConnectionLimits, metrics: Metrics) -> type[ShipwayHttpProtocol]:
    """A protocol class bound to one server's limits, metrics and idle registry.

    uvicorn instantiates the protocol itself, so per-server state rides on a fresh subclass
    rather than on module globals.
    """
    attributes = {"limits": limits, "metrics": metrics, "registry": _Registry()}
    return type("ShipwayHttpProtocol", (ShipwayHttpProtocol,), attributes)


class ShipwayHttpProtocol(HttpToolsProtocol):
    limits: ClassVar[ConnectionLimits]
    metrics: ClassVar[Metrics]
    registry: ClassVar[_Registry]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._awaiting_headers = True
        self._in_body = False
        self._header_bytes = 0
        self._read_timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None

    # -- connection ---------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        crowded = len(self.connections) >= self.limits.max_connections
        super().connection_made(transport)
        self.metrics.connections_open.inc()
        if crowded and not self._evict_idle():
            self._refuse(
                TooManyConnections(
                    f"the server has {self.limits.max_connections} open connections "
                    "(server.max_connections), all busy; retry shortly",
                    retry_after=1,
                ),
                "refused_at_capacity",
            )
            return
        self.registry.idle[self] = None
        self._read_timer = self.loop.call_later(
            self.limits.header_timeout_s, self._headers_too_slow
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.metrics.connections_open.dec()
        self.registry.idle.pop(self, None)
        self._cancel_read_timer()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        super().connection_lost(exc)

    def _evict_idle(self) -> bool:
        for victim in self.registry.idle:
            if victim is not self:
                del self.registry.idle[victim]
                victim.metrics.connections_closed.labels("evicted_idle").inc()
                victim.transport.close()
                return True
        return False

    # -- reading ------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._awaiting_headers:
            self._header_bytes += len(data)
        super().data_received(data)
        if self.transport.is_closing():
            return
        if self._awaiting_headers:
            if self._header_bytes > self.limits.max_header_bytes:
                self._refuse(
                    HeadersTooLarge(
                        "the request line and headers are larger than the "
                        f"{self.limits.max_header_bytes}-byte limit (server.max_header_bytes)"
                    ),
                    "headers_too_large",
                )
            elif self._header_bytes and self._read_timer is None:
                self._read_timer = self.loop.call_later(
                    self.limits.header_timeout_s, self._headers_too_slow
                )
        elif self._in_body and self._read_timer is None:
            self._read_timer = self.loop.call_later(self.limits.body_timeout_s, self._body_too_slow)

    def on_headers_complete(self) -> None:
        self._awaiting_headers = False
        self._in_body = True
        self._header_bytes = 0
        self._cancel_read_timer()
        self.registry.idle.pop(self, None)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_body = False
        self._awaiting_headers = True
        self._cancel_read_timer()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self.registry.idle[self] = None

    def _cancel_read_timer(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _headers_too_slow(self) -> None:
        self._read_timer = None
        if self.transport.is_closing() or not self._idle():
            return  # a pipelined request behind a running one: uvicorn paused reading it
        if self._header_bytes == 0:
            self.metrics.connections_closed.labels("idle_timeout").inc()
            self.transport.close()
            return
        self._refuse(
            RequestTimeout(
                "the request headers did not arrive within "
                f"{self.limits.header_timeout_s:g}s (server.header_timeout_s)"
            ),
            "header_timeout",
        )

    def _body_too_slow(self) -> None:
        self._read_timer = None
        cycle = self.cycle
        if self.transport.is_closing() or cycle is None or not self._in_body:
            return
        error = RequestTimeout(
            f"the request body did not arrive within {self.limits.body_timeout_s:g}s of its "
            "headers (server.body_timeout_s)"
        )
        # The route reading the body sees a disconnect; this tells it why (api/http_input.py).
        cycle.scope["state"]["shipway.body_timeout"] = True
        if cycle.response_started:
            self.metrics.connections_closed.labels("body_timeout").inc()
            self.transport.close()
        else:
            self._refuse(error, "body_timeout")
        cycle.disconnected = True
        cycle.message_event.set()

    def _idle(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _refuse(self, error: ShipwayError, reason: str) -> None:
        """Answer ``error`` on the raw transport and close: no route runs for these."""
        self.metrics.connections_closed.labels(reason).inc()
        structlog.get_logger("shipway.http").info(
            "connection refused", reason=reason, status=error.status, client=self.client
        )
        body = orjson.dumps(error.to_dict())
        head = [
            STATUS_LINE[error.status],
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n",
        ]
        if error.retry_after is not None:
            head.append(b"retry-after: %d\r\n" % max(1, int(error.retry_after)))
        self.transport.write(b"".join([*head, b"\r\n", body]))
        self.transport.close()

    # -- writing ------------------------------------------------------------------------------
    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(
                self.limits.write_timeout_s, self._client_not_reading
            )

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _client_not_reading(self) -> None:
        self._write_timer = None
        if self.transport.is_closing():
            return
        self.metrics.connections_closed.labels("write_timeout").inc()
        structlog.get_logger("shipway.http").info(
            "client stopped reading; dropping it",
            client=self.client,
            after_s=self.limits.write_timeout_s,
        )
        self.transport.abort()

    # -- HTTP/1.0 -----------------------------------------------------------------------------
    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        if cycle.scope["http_version"] == "1.0":
            # uvicorn would frame an unknown-length body as chunked; HTTP/1.0 has no chunks.
            cycle.__class__ = _Http10Cycle
        super()._start_asgi_task(cycle, app)


class _Http10Cycle(RequestResponseCycle):
    """An HTTP/1.0 exchange: a body of unknown length is ended by closing the connection."""

    _close_delimited = False

    async def send(self, message: Any) -> None:
        if message["type"] == "http.response.start" and not self.response_started:
            names = {name.lower() for name, _ in message.get("headers", ())}
            if (
                b"content-length" not in names
                and self.scope["method"] != "HEAD"
                and message["status"] not in (204, 304)
            ):
                self._close_delimited = True
                self.chunked_encoding = False  # tells uvicorn not to add chunked framing
        elif (
            message["type"] == "http.response.body"
            and self._close_delimited
            and not self.response_complete
        ):
            await self._send_close_delimited(message)
            return
        await super().send(message)

    async def _send_close_delimited(self, message: Any) -> None:
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.disconnected:
            return
        self.transport.write(message.get("body", b""))
        if not message.get("more_body", False):
            self.response_complete = True
            self.message_event.set()
            self.transport.close()
            self.on_response()
