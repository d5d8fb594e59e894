"""Raw sockets for tests that must misbehave below what an HTTP client library allows."""

from __future__ import annotations

import socket
import time

import orjson


def connect(port: int, *, rcvbuf: int | None = None, timeout_s: float = 10) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:  # before connect, so the advertised window starts small
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(timeout_s)
    sock.connect(("127.0.0.1", port))
    return sock


def post_bytes(path: str, body: dict[str, object], version: str = "1.1") -> bytes:
    data = orjson.dumps(body)
    head = f"POST {path} HTTP/{version}\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    return head.encode() + b"Content-Length: %d\r\n\r\n" % len(data) + data


def read_until_closed(sock: socket.socket, limit_s: float) -> tuple[bytes, float, str]:
    """Everything the server sends until it closes; (bytes, seconds taken, how it ended)."""
    started = time.monotonic()
    out = bytearray()
    sock.settimeout(limit_s)
    try:
        while chunk := sock.recv(65536):
            out += chunk
            if time.monotonic() - started > limit_s:
                return bytes(out), time.monotonic() - started, "still open"
        ended = "closed"
    except ConnectionResetError:
        ended = "reset"
    except TimeoutError:
        ended = "still open"
    return bytes(out), time.monotonic() - started, ended


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/") else 0
