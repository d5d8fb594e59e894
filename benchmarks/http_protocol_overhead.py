"""The CPU cost of Shipway's connection limits, measured in-process, without the network.

``gateway_overhead.py`` compares HTTP servers end to end, but this VM's speed drifts by
±10% between rounds, more than the cost the limits are allowed (5%). Here one protocol
instance at a time is fed whole keep-alive requests through a fake transport, with a
trivial ASGI app behind it, in alternating rounds: uvicorn's ``HttpToolsProtocol`` as is,
and ``ShipwayHttpProtocol`` (header limit, header/body/write timeouts, idle registry) with
the default limits. The difference is the limits' CPU per request, which is then put beside
the CPU per request of a whole gateway (the bare forwarder's, from the req/s it reaches on
one core).

    python benchmarks/http_protocol_overhead.py [--quick]
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import uvloop
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from _common import parse_args, report, table
from shipway.api.http_protocol import ConnectionLimits, protocol_class
from shipway.config import ServerSettings
from shipway.telemetry.metrics import Metrics

BODY = b'{"model": "fixed", "messages": [{"role": "user", "content": "Say ok."}], "max_tokens": 8}'
REQUEST = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY
)
ANSWER = b'{"ok": true}'


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    while (await receive()).get("more_body"):
        pass
    headers = [(b"content-type", b"application/json"), (b"content-length", b"12")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": ANSWER})


class _Transport:
    """Just enough of an asyncio transport for uvicorn's protocol."""

    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 8700) if name in ("peername", "sockname") else default

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def per_request_us(protocol_cls: type, requests: int) -> float:
    config = Config(app=app, http=protocol_cls, lifespan="off", log_level="warning")
    config.load()
    protocol = protocol_cls(config=config, server_state=ServerState(), app_state={})
    protocol.connection_made(_Transport())
    started = time.process_time()
    for _ in range(requests):
        protocol.data_received(REQUEST)
        while not protocol.cycle.response_complete:  # noqa: ASYNC110 - a few loop turns, no hook
            await asyncio.sleep(0)
    return (time.process_time() - started) / requests * 1e6


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    rounds, requests = (3, 2_000) if args.quick else (15, 20_000)
    limits = ConnectionLimits.from_settings(ServerSettings())
    shipway = protocol_class(limits, Metrics())
    samples: dict[str, list[float]] = {"uvicorn httptools": [], "shipway limits": []}

    async def measure() -> None:
        await per_request_us(HttpToolsProtocol, requests // 10)  # warm-up
        await per_request_us(shipway, requests // 10)
        for _ in range(rounds):
            samples["uvicorn httptools"].append(await per_request_us(HttpToolsProtocol, requests))
            samples["shipway limits"].append(await per_request_us(shipway, requests))

    uvloop.run(measure())
    base, ours = (statistics.median(v) for v in samples.values())
    paired = statistics.median(b - a for a, b in zip(*samples.values(), strict=True))
    rows = [[name, statistics.median(v), min(v), max(v)] for name, v in samples.items()]
    gateway_us = 1e6 / 5_500  # the bare forwarder's ~5,500 req/s on one core (gateway_overhead)
    report(
        "HTTP protocol overhead (in-process, no network)",
        [
            table(["protocol", "median µs/request", "min", "max"], rows),
            f"Added by Shipway's limits: {paired:.2f} µs per request (median of paired "
            f"rounds; {ours - base:.2f} µs between medians), {paired / gateway_us:.1%} of a "
            f"bare forwarder request's ~{gateway_us:.0f} µs of CPU.",
        ],
        [
            f"{rounds} alternating rounds of {requests:,} keep-alive requests per protocol, "
            "one connection, a trivial ASGI app, uvloop; CPU time of this process.",
        ],
    )


if __name__ == "__main__":
    main()
