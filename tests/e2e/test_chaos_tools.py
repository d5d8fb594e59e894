"""`shipway chaos proxy` and `shipway chaos run` as subprocesses against real servers.

Shares are checked against a binomial 5-sigma bound (and the proxy's own counts, exactly);
the only timing is a lower bound on a stall, which a slow machine cannot break.
"""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from tests.support.servers import Server, chaos_proxy, shipway_server

FAULTS = ("reset", "error", "stall", "cut")
NO_FAULTS = {f"{fault}_rate": 0.0 for fault in FAULTS}


@pytest.fixture(scope="module")
def proxy(upstream: Server) -> Iterator[Server]:
    srv = chaos_proxy(upstream.base, seed=7)
    yield srv
    srv.stop()


def configure(proxy: Server, **rates: float) -> dict[str, Any]:
    """Set every rate (0 unless given) and return the counts so far."""
    answer = httpx.post(proxy.base + "/_chaos/config", json={**NO_FAULTS, **rates})
    assert answer.status_code == 200, answer.text
    return dict(httpx.get(proxy.base + "/_chaos/stats").json())


def counted_since(proxy: Server, before: dict[str, Any]) -> dict[str, int]:
    after = httpx.get(proxy.base + "/_chaos/stats").json()
    return {k: after[k] - before[k] for k in ("requests", "passed", *FAULTS, "upstream_errors")}


def chat(i: int, stream: bool = False) -> dict[str, Any]:
    return {"model": "echo", "messages": [{"role": "user", "content": f"hi {i}"}], "stream": stream}


def classify(client: httpx.Client, url: str, i: int) -> str:
    """What one plain request met, seen from the client only."""
    try:
        with client.stream("POST", url + "/v1/chat/completions", json=chat(i)) as response:
            try:
                response.read()
            except (httpx.RemoteProtocolError, httpx.ReadError):
                return "cut"  # the status line came, the whole body did not
    except (httpx.RemoteProtocolError, httpx.ReadError):
        return "reset"  # the connection died before any response
    body = response.json()
    if response.status_code == 500:
        assert body["error"]["code"] == "chaos_fault"
        return "error"
    assert response.status_code == 200, response.text
    assert body["choices"][0]["message"]["content"] == f"echo: hi {i}"
    return "whole"


def test_each_fault_comes_at_its_rate(proxy: Server) -> None:
    rates = {"error_rate": 0.2, "reset_rate": 0.1, "cut_rate": 0.1, "stall_rate": 0.05}
    before = configure(proxy, **rates, stall_s=0.05)
    n = 400
    with httpx.Client(timeout=30) as client:
        seen = Counter(classify(client, proxy.base, i) for i in range(n))
    counted = counted_since(proxy, before)
    assert counted["requests"] == n
    assert counted["upstream_errors"] == 0
    # What the client saw is exactly what the proxy says it did.
    assert seen["reset"] == counted["reset"]
    assert seen["error"] == counted["error"]
    assert seen["cut"] == counted["cut"]
    assert seen["whole"] == counted["passed"] + counted["stall"]
    for fault in FAULTS:
        p = rates[f"{fault}_rate"]
        assert abs(counted[fault] - n * p) <= 5 * math.sqrt(n * p * (1 - p)), (fault, counted)


def test_a_reset_is_a_tcp_rst(proxy: Server) -> None:
    before = configure(proxy, reset_rate=1.0)
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        httpx.post(proxy.base + "/v1/chat/completions", json=chat(0), timeout=30)
    # On a raw socket: an RST makes recv() fail; a plain close would read b"" instead.
    body = json.dumps(chat(1)).encode()
    head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as sock:
        sock.sendall(head.encode() + body)
        with pytest.raises(ConnectionResetError):
            while sock.recv(65536):
                pass
    assert counted_since(proxy, before)["reset"] == 2


def test_a_cut_stream_stops_after_its_first_event(proxy: Server) -> None:
    configure(proxy, cut_rate=1.0)
    events: list[str] = []
    url = proxy.base + "/v1/chat/completions"
    # The chunked body never ends properly: the client must see an error, not an early end.
    with (
        pytest.raises(httpx.RemoteProtocolError),
        httpx.stream("POST", url, json=chat(0, stream=True), timeout=30) as response,
    ):
        assert response.status_code == 200
        events.extend(line for line in response.iter_lines() if line.startswith("data:"))
    assert len(events) == 1
    assert json.loads(events[0].removeprefix("data:"))["choices"][0]["delta"]["role"]


def test_a_stall_is_silence_then_the_answer(proxy: Server) -> None:
    configure(proxy, stall_rate=1.0, stall_s=1.0)
    start = time.perf_counter()
    answer = httpx.post(proxy.base + "/v1/chat/completions", json=chat(3), timeout=30)
    assert time.perf_counter() - start >= 0.9
    assert answer.json()["choices"][0]["message"]["content"] == "echo: hi 3"


def test_rates_past_one_are_refused_and_kept(proxy: Server) -> None:
    configure(proxy, error_rate=0.5)
    answer = httpx.post(proxy.base + "/_chaos/config", json={"reset_rate": 0.6})
    assert answer.status_code == 400
    assert "at most 1" in answer.json()["error"]["message"]
    assert httpx.get(proxy.base + "/_chaos/stats").json()["rates"]["reset_rate"] == 0.0


class DripUpstream:
    """An SSE upstream that sends one event, then holds the rest until the test has read that
    event through the proxy: a proxy that buffers would hold it until the 10 s give-up."""

    def __init__(self) -> None:
        self.first_seen = threading.Event()
        self.released_by_client: bool | None = None
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # the body ends at close: no length, no chunks

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                self.wfile.write(b'data: {"n": 1}\n\n')
                outer.released_by_client = outer.first_seen.wait(timeout=10)
                self.wfile.write(b'data: {"n": 2}\n\ndata: [DONE]\n\n')

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_sse_flows_through_unbuffered() -> None:
    drip = DripUpstream()
    srv = chaos_proxy(drip.base)
    try:
        data = []
        with httpx.stream(
            "POST", srv.base + "/v1/chat/completions", json=chat(0, stream=True), timeout=30
        ) as response:
            for line in response.iter_lines():
                if line.startswith("data:"):
                    data.append(line.removeprefix("data: "))
                    drip.first_seen.set()
        assert data == ['{"n": 1}', '{"n": 2}', "[DONE]"]
        assert drip.released_by_client is True
    finally:
        srv.stop()
        drip.server.shutdown()
        drip.server.server_close()


def shipway_cli(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "shipway", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def test_remote_targets_are_refused() -> None:
    proxy = shipway_cli("chaos", "proxy", "--target", "http://192.0.2.1:9100")
    run = shipway_cli("chaos", "run", "--url", "http://192.0.2.1:8700", "--model", "m")
    for done in (proxy, run):
        assert done.returncode == 2
        assert "--allow-remote" in done.stderr


def run_report(url: str, *flags: str) -> dict[str, Any]:
    done = shipway_cli("chaos", "run", "--url", url, "--format", "json", *flags)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_run_through_the_proxy_reports_its_error_mix(proxy: Server) -> None:
    before = configure(proxy, error_rate=0.5, error_status=503)
    report = run_report(proxy.base, "--model", "echo", "--requests", "100", "--concurrency", "4")
    counted = counted_since(proxy, before)
    configure(proxy, error_status=500)
    (errors,) = report["errors"]
    assert errors["status"] == 503 and errors["code"] == "chaos_fault"
    assert report["sent"] == 100 and report["succeeded"] + errors["count"] == 100
    # The two /metrics reads go through the proxy too (and may meet a fault).
    assert errors["count"] <= counted["error"] <= errors["count"] + 2
    assert abs(errors["count"] - 50) <= 5 * math.sqrt(100 * 0.25)
    # The fake upstream has no /metrics: the counters are n.a., not 0.
    assert report["metrics"].startswith("/metrics answered")
    assert report["retries"] is None and report["fallbacks"] is None


def test_run_against_shipway(upstream: Server) -> None:
    model = {"backend": "openai", "base_url": upstream.base + "/v1", "upstream_model": "echo"}
    gateway = shipway_server({"embedded_models": False, "models": {"echo": model}})
    try:
        report = run_report(
            gateway.base,
            *("--model", "echo", "--requests", "100", "--concurrency", "8"),
            *("--stream-share", "0.25"),
        )
    finally:
        gateway.stop()
    assert report["success_rate"] == 1.0
    assert (report["sent"], report["streamed"], report["errors"]) == (100, 25, [])
    assert report["served_by"] == [{"served_by": "echo", "model": "echo", "count": 100}]
    latency = report["latency_ms"]
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
    assert report["metrics"] == "ok"
    for key in ("retries", "fallbacks", "breaker_transitions"):
        assert report[key] is None or report[key]["total"] == 0  # n.a. until the server counts
