"""One hostile client must not stall, slow or mislead the others.

Raw sockets against a real `shipway serve` (both embedded models, plus an upstream with one
slot behind the fake upstream) with short connection limits, so each misbehaviour is seen
within seconds: a client that stops reading a stream, silent and half-sent requests, a huge
header block, a body that never ends, an aborted upload, an HTTP/1.0 stream, a flood of
idle connections.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import psutil
import pytest
from tests.e2e.conftest import CHAT
from tests.support.raw_http import connect, post_bytes, read_until_closed, status_of
from tests.support.servers import Server, fake_upstream, shipway_server

LIMITS = {
    "header_timeout_s": 1,
    "body_timeout_s": 1,
    "write_timeout_s": 2,
    "keepalive_timeout_s": 1,
    "max_connections": 32,
}


@pytest.fixture(scope="module")
def upstream() -> Iterator[Server]:
    srv = fake_upstream()
    yield srv
    srv.stop()


def _one_slot(upstream: Server) -> dict[str, object]:
    """The fake upstream's echo model with a single slot: one held stream blocks it."""
    return {
        "backend": "openai",
        "base_url": upstream.base + "/v1",
        "upstream_model": "echo",
        "max_concurrency": 1,
    }


@pytest.fixture(scope="module")
def gateway(upstream: Server) -> Iterator[Server]:
    srv = shipway_server({"server": LIMITS, "models": {"up": _one_slot(upstream)}})
    yield srv
    srv.stop()


def _metric(server: Server, name: str, **labels: str) -> float:
    text = httpx.get(server.base + "/metrics", timeout=10).text
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.compile(rf"^{name}\{{{re.escape(want)}\}} (\S+)$" if want else rf"^{name} (\S+)$")
    for line in text.splitlines():
        if match := pattern.match(line):
            return float(match.group(1))
    return 0.0


def _wait_for(predicate: object, limit_s: float) -> bool:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.2)
    return False


def _quick_chat(server: Server, model: str = CHAT, timeout_s: float = 15) -> httpx.Response:
    return httpx.post(
        server.base + "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3},
        timeout=timeout_s,
    )


def _worker_state(server: Server) -> str:
    status = httpx.get(server.base + "/readyz", timeout=10).json()
    return str(status["models"][CHAT]["workers"][0]["state"])


@pytest.fixture(scope="module")
def patient_gateway(upstream: Server) -> Iterator[Server]:
    """A long write timeout, so only the end of generation can free a stalled stream's slot."""
    srv = shipway_server(
        {
            "server": {"write_timeout_s": 120, "max_body_bytes": 16 * 1024 * 1024},
            "embedded_models": False,
            "models": {"up": _one_slot(upstream)},
        },
        ready_path="/healthz",
    )
    yield srv
    srv.stop()


def test_a_stalled_stream_gives_its_slot_back_when_the_backend_is_done(
    patient_gateway: Server,
) -> None:
    # 6,000 chunks of ~1 kB: more than the socket buffers hold, fewer than Shipway buffers.
    words = " ".join(["w" * 1000] * 6000)
    request = post_bytes(
        "/v1/chat/completions",
        {"model": "up", "messages": [{"role": "user", "content": words}], "stream": True},
    )
    with contextlib.closing(connect(patient_gateway.port, rcvbuf=4096)) as stalled:
        stalled.sendall(request)
        assert stalled.recv(64).startswith(b"HTTP/1.1 200")
        # Stop reading. The upstream's only slot must come back when its stream ends.
        reply = _quick_chat(patient_gateway, model="up", timeout_s=20)
        assert reply.status_code == 200, reply.text
        stalled.settimeout(0.5)
        with pytest.raises(TimeoutError):  # still connected: nobody waited on it
            while stalled.recv(65536):
                pass


def test_a_stalled_local_stream_leaves_the_worker_free(gateway: Server) -> None:
    request = post_bytes(
        "/v1/chat/completions",
        {
            "model": CHAT,
            "messages": [{"role": "user", "content": "Tell me a long story."}],
            "max_tokens": 400,
            "ignore_eos": True,
            "logprobs": True,
            "top_logprobs": 20,
            "stream": True,
        },
    )
    with contextlib.closing(connect(gateway.port, rcvbuf=4096)) as stalled:
        stalled.sendall(request)
        assert stalled.recv(64).startswith(b"HTTP/1.1 200")
        ended = _wait_for(lambda: _worker_state(gateway) == "idle", 90)
        assert ended, httpx.get(gateway.base + "/readyz").text + gateway.log.read_text()[-4000:]
        started = time.monotonic()
        reply = _quick_chat(gateway)
        assert reply.status_code == 200, reply.text
        assert time.monotonic() - started < 10
        _, _, ended = read_until_closed(stalled, 30)
        assert ended in ("closed", "reset")


def test_a_client_that_stops_reading_is_dropped_and_frees_its_upstream_slot(
    gateway: Server,
) -> None:
    before = _metric(gateway, "shipway_http_connections_closed_total", reason="write_timeout")
    # ~40,000 chunks of SSE: far more than the socket buffers between us and the server.
    request = post_bytes(
        "/v1/chat/completions",
        {"model": "up", "messages": [{"role": "user", "content": "w " * 40_000}], "stream": True},
    )
    with contextlib.closing(connect(gateway.port, rcvbuf=4096)) as stalled:
        stalled.sendall(request)
        assert stalled.recv(64).startswith(b"HTTP/1.1 200")
        dropped = _wait_for(
            lambda: (
                _metric(gateway, "shipway_http_connections_closed_total", reason="write_timeout")
                > before
            ),
            20,
        )
        assert dropped, "a client that reads nothing was never dropped"
        # The upstream has one slot; the dropped stream must have given it back.
        reply = _quick_chat(gateway, model="up", timeout_s=10)
        assert reply.status_code == 200, reply.text
        _, _, ended = read_until_closed(stalled, 20)
        assert ended in ("closed", "reset")


def test_silent_and_half_sent_requests_time_out(gateway: Server) -> None:
    with contextlib.closing(connect(gateway.port)) as silent:
        data, took, ended = read_until_closed(silent, 10)
        assert (data, ended) == (b"", "closed")
        assert 0.5 < took < 5
    with contextlib.closing(connect(gateway.port)) as half:
        half.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: app")
        data, took, ended = read_until_closed(half, 10)
        assert status_of(data) == 408, data[:200]
        assert b'"code":"request_timeout"' in data and b"header_timeout_s" in data
        assert ended == "closed" and took < 5
    assert _quick_chat(gateway).status_code == 200


def test_a_body_that_never_ends_times_out(gateway: Server) -> None:
    with contextlib.closing(connect(gateway.port)) as slow:
        slow.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n"
            b'{"model": "smollm2'
        )
        data, took, ended = read_until_closed(slow, 10)
        assert status_of(data) == 408, data[:200]
        assert b"body_timeout_s" in data
        assert ended == "closed" and took < 5


def test_an_8_mb_header_gets_431_without_growing_the_server(gateway: Server) -> None:
    rss_before = psutil.Process(gateway.proc.pid).memory_info().rss
    header = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (8 * 1024 * 1024) + b"\r\n\r\n"
    with contextlib.closing(connect(gateway.port)) as big:

        def send() -> None:
            with contextlib.suppress(OSError):  # the server closes mid-upload, as it should
                big.sendall(header)

        sender = threading.Thread(target=send)
        sender.start()
        data, _, _ = read_until_closed(big, 10)
        sender.join(10)
    assert status_of(data) == 431, data[:200]
    assert b'"code":"headers_too_large"' in data
    grown = psutil.Process(gateway.proc.pid).memory_info().rss - rss_before
    assert grown < 20 * 1024 * 1024, f"server grew by {grown / 1e6:.0f} MB"
    assert httpx.get(gateway.base + "/healthz", timeout=5).status_code == 200


def test_an_aborted_upload_is_a_quiet_499(gateway: Server) -> None:
    errors_before = _metric(
        gateway, "shipway_http_responses_total", path="/v1/chat/completions", status="500"
    )
    with contextlib.closing(connect(gateway.port)) as aborted:
        aborted.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Request-Id: aborted-upload-1\r\n"
            b"Content-Length: 100\r\n\r\n123456789"
        )
        time.sleep(0.2)
    assert _wait_for(lambda: "aborted-upload-1" in gateway.log.read_text(), 5)
    lines = [line for line in gateway.log.read_text().splitlines() if "aborted-upload-1" in line]
    assert len(lines) == 1, lines
    assert '"status":499' in lines[0] and '"level":"info"' in lines[0]
    assert "Traceback" not in gateway.log.read_text()
    after = _metric(
        gateway, "shipway_http_responses_total", path="/v1/chat/completions", status="500"
    )
    assert after == errors_before
    assert (
        _metric(gateway, "shipway_http_responses_total", path="/v1/chat/completions", status="499")
        >= 1
    )


def test_an_http_1_0_stream_is_close_delimited_not_chunked(gateway: Server) -> None:
    request = post_bytes(
        "/v1/chat/completions",
        {"model": "up", "messages": [{"role": "user", "content": "one two three"}], "stream": True},
        version="1.0",
    )
    with contextlib.closing(connect(gateway.port)) as old:
        old.sendall(request)
        data, _, ended = read_until_closed(old, 15)
    head, _, body = data.partition(b"\r\n\r\n")
    headers = head.lower()
    assert status_of(data) == 200, data[:300]
    assert b"transfer-encoding" not in headers
    assert b"connection: close" in headers
    assert ended == "closed"
    assert body.startswith(b"data: {") and body.endswith(b"data: [DONE]\n\n")
    assert b"\r\n0\r\n" not in body  # no chunk framing anywhere


def test_a_flood_of_idle_connections_does_not_lock_out_real_clients(gateway: Server) -> None:
    flood: list[socket.socket] = []
    try:
        for _ in range(3 * int(LIMITS["max_connections"])):
            sock = connect(gateway.port)
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # half a request, then silence
            flood.append(sock)
        started = time.monotonic()
        assert httpx.get(gateway.base + "/healthz", timeout=5).status_code == 200
        assert time.monotonic() - started < 2
        assert _metric(gateway, "shipway_http_connections_closed_total", reason="evicted_idle") > 0
        assert _metric(gateway, "shipway_http_connections_open") <= LIMITS["max_connections"] + 2
    finally:
        for sock in flood:
            sock.close()
