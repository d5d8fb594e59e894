"""Secrets never leak: canary values in every secret place, traffic that exercises every error
path, then a search of everything the server lets out.

Canaries: the upstream API key (the variable named by ``api_key_env``), the key-hash pepper
(``SHIPWAY_KEY_PEPPER``), the audit HMAC key (``SHIPWAY_AUDIT_KEY``), keys made by the CLI and
by the admin API, a rotated key, and bogus keys sent by clients. Searched: every response body
and header, ``/metrics``, the server's log (access log included), the data directory (the
SQLite database, which keeps only keyed hashes), the CLI's key listing, and what the upstream
received (its own key, never the client's), and every span exported to an OTLP receiver
started by the test.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from tests.support.keys import MadeKey, bearer, create_key, shipway_cli
from tests.support.otlp_receiver import OtlpReceiver, otlp_receiver
from tests.support.servers import SINGLE_ATTEMPT, Server, shipway_server

from shipway.security.key_format import generate_key

TAG = uuid.uuid4().hex
UPSTREAM_KEY = f"sk-canary-upstream-{TAG}"
PEPPER = f"pepper-canary-{TAG}"
AUDIT_KEY = f"auditkey-canary-{TAG}"
BOGUS_KEY = f"sw-canary-bogus-{TAG}"
UNISSUED_KEY = generate_key()
ENV = {
    "CANARY_UPSTREAM_KEY": UPSTREAM_KEY,
    "SHIPWAY_KEY_PEPPER": PEPPER,
    "SHIPWAY_AUDIT_KEY": AUDIT_KEY,
    "OTEL_BSP_SCHEDULE_DELAY": "100",  # export spans every 0.1 s, not 5 s
}


class _KeyEchoingUpstream(BaseHTTPRequestHandler):
    """An upstream that refuses every key and quotes it back, as some proxies do."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        quoted = self.headers.get("Authorization")
        body = json.dumps(
            {
                "error": {
                    "message": f"Authentication Error, invalid key. Received API Key = {quoted}",
                    "type": "invalid_request_error",
                    "code": "invalid_api_key",
                }
            }
        ).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def echoing_upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _KeyEchoingUpstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture(scope="module")
def traces() -> Iterator[OtlpReceiver]:
    yield from otlp_receiver()


@pytest.fixture(scope="module")
def gateway(upstream: Server, echoing_upstream: str, traces: OtlpReceiver) -> Iterator[Server]:
    def up(name: str) -> dict[str, Any]:
        return {
            "backend": "openai",
            "base_url": upstream.base + "/v1",
            "upstream_model": name,
            "api_key_env": "CANARY_UPSTREAM_KEY",
        }

    models = {
        "up": up("echo"),
        "up-500": up("fail-500"),
        "up-401": up("fail-401"),
        "up-429": up("fail-429"),
        "up-break": up("break-stream"),
        "leaky": {
            "backend": "openai",
            "base_url": echoing_upstream,
            "api_key_env": "CANARY_UPSTREAM_KEY",
        },
    }
    config = {
        "embedded_models": False,
        "resilience": SINGLE_ATTEMPT,  # each fault's own status, not the retries
        "models": models,
        "telemetry": {"tracing": {"otlp_endpoint": traces.endpoint}},
    }
    srv = shipway_server(config, env=ENV)
    yield srv
    srv.stop()


class Traffic:
    def __init__(self, http: httpx.Client, base: str, upstream: str) -> None:
        self.http = http
        self.base = base
        self.upstream = upstream
        self.responses: list[tuple[str, httpx.Response]] = []
        self.upstream_saw: list[dict[str, Any]] = []

    def upstream_last(self) -> None:
        """Keep what the fake upstream received last."""
        self.upstream_saw.append(self.http.get(self.upstream + "/_last").json())

    def send(self, method: str, path: str, key: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = {**(bearer(key) if key else {}), **kwargs.pop("headers", {})}
        response = self.http.request(method, self.base + path, headers=headers, **kwargs)
        self.responses.append((f"{method} {path} -> {response.status_code}", response))
        return response


def _chat(model: str, text: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def _drive(traffic: Traffic, admin: MadeKey, user: MadeKey) -> dict[str, str]:
    """Every kind of answer the server gives; returns the keys the admin API made."""
    send = traffic.send
    # 401: no key, a bogus one, a well-formed one never issued, a key in the wrong scheme.
    for key in (None, BOGUS_KEY, UNISSUED_KEY):
        assert send("GET", "/v1/models", key).status_code == 401
        assert send("POST", "/v1/chat/completions", key, json=_chat("up")).status_code == 401
    assert (
        send("GET", "/v1/models", headers={"Authorization": f"Basic {user.key}"}).status_code == 401
    )
    assert send("GET", "/admin/keys", headers={"Authorization": BOGUS_KEY}).status_code == 401
    # 403: a user key on admin routes and /metrics.
    assert send("GET", "/admin/keys", user.key).status_code == 403
    assert send("GET", "/metrics", user.key).status_code == 403
    assert send("POST", "/admin/keys", user.key, json={"name": "x"}).status_code == 403
    # 404 and 405.
    assert send("POST", "/v1/chat/completions", user.key, json=_chat("nope")).status_code == 404
    assert send("GET", "/v1/models/nope", user.key).status_code == 404
    assert send("GET", "/no/such/route", user.key).status_code == 404
    assert send("DELETE", "/v1/models", user.key).status_code == 405
    # 400: bad JSON, a control character, a wrong type; a key smuggled in the body.
    bad = {"content": b"{not json", "headers": {"content-type": "application/json"}}
    assert send("POST", "/v1/chat/completions", user.key, **bad).status_code == 400
    assert (
        send("POST", "/v1/chat/completions", user.key, json=_chat("up", "a\x1bb")).status_code
        == 400
    )
    wrong = _chat("up", max_tokens=user.key)
    assert send("POST", "/v1/chat/completions", user.key, json=wrong).status_code == 400
    smuggled = _chat("up", api_key=user.key, user=f"someone-{TAG}")
    assert send("POST", "/v1/chat/completions", user.key, json=smuggled).status_code == 200
    traffic.upstream_last()
    # 200: chat, a stream, embeddings, models.
    assert send("POST", "/v1/chat/completions", user.key, json=_chat("up")).status_code == 200
    stream = _chat("up", stream=True, stream_options={"include_usage": True})
    assert send("POST", "/v1/chat/completions", user.key, json=stream).status_code == 200
    embed = {"model": "up", "input": ["one", "two"]}
    assert send("POST", "/v1/embeddings", user.key, json=embed).status_code == 200
    traffic.upstream_last()
    assert send("GET", "/v1/models/up", user.key).status_code == 200
    # Upstream failures: 5xx, refused credentials, 429, a stream broken mid-way.
    assert send("POST", "/v1/chat/completions", user.key, json=_chat("up-500")).status_code == 502
    refused = send("POST", "/v1/chat/completions", user.key, json=_chat("up-401"))
    assert refused.status_code == 502
    assert "CANARY_UPSTREAM_KEY" in refused.json()["error"]["message"]  # its name, not value
    assert send("POST", "/v1/chat/completions", user.key, json=_chat("up-429")).status_code == 429
    broken = _chat("up-break", "one two three four", stream=True)
    assert send("POST", "/v1/chat/completions", user.key, json=broken).status_code == 200
    # The admin API: make, rotate, revoke, list; bad bodies and missing keys.
    made = send("POST", "/admin/keys", admin.key, json={"name": "limited", "rpm": 1})
    assert made.status_code == 201
    limited = made.json()["key"]
    rotated = send("POST", f"/admin/keys/{made.json()['id']}/rotate", admin.key, json={})
    assert rotated.status_code == 201
    new = rotated.json()
    assert send("POST", f"/admin/keys/{new['id']}/revoke", admin.key).status_code == 200
    assert send("POST", "/admin/keys", admin.key, json={"name": 5}).status_code == 400
    assert send("POST", "/admin/keys/999999/revoke", admin.key).status_code == 404
    assert send("GET", "/admin/keys", admin.key).status_code == 200
    # 429 from a key's own limit; then the revoked and replaced keys are refused.
    rate = send("POST", "/admin/keys", admin.key, json={"name": "rpm-1", "rpm": 1})
    assert rate.status_code == 201
    one_rpm = rate.json()["key"]
    assert send("POST", "/v1/chat/completions", one_rpm, json=_chat("up")).status_code == 200
    assert send("POST", "/v1/chat/completions", one_rpm, json=_chat("up")).status_code == 429
    time.sleep(1.2)  # auth.key_cache_s
    assert send("GET", "/v1/models", limited).status_code == 401
    assert send("GET", "/v1/models", new["key"]).status_code == 401
    return {"limited": limited, "rotated": new["key"], "rpm-1": one_rpm}


def test_canaries_never_leave_the_server(
    gateway: Server, upstream: Server, traces: OtlpReceiver
) -> None:
    admin = create_key(gateway, "root", "--admin", env=ENV)
    user = create_key(gateway, "user", env=ENV)
    with httpx.Client(timeout=30) as http:
        traffic = Traffic(http, gateway.base, upstream.base)
        made = _drive(traffic, admin, user)
        metrics = http.get(gateway.base + "/metrics", headers=bearer(admin.key))
    assert metrics.status_code == 200 and "shipway_http_responses_total" in metrics.text
    listing = shipway_cli(gateway, "keys", "list", env=ENV)
    assert listing.returncode == 0, listing.stderr
    time.sleep(0.5)  # the audit log writes every 0.2 s

    secrets = {
        "upstream key": UPSTREAM_KEY,
        "pepper": PEPPER,
        "audit key": AUDIT_KEY,
        "bogus key": BOGUS_KEY,
        "unissued key": UNISSUED_KEY,
        "admin key": admin.key,
        "user key": user.key,
        **{f"{name} key": key for name, key in made.items()},
    }
    # A key made over HTTP is in the one response that made it, and nowhere else.
    creations = {key: f"key '{name}' created" for name, key in made.items()}

    def leaks(text: str, where: str, allowed: str | None = None) -> list[str]:
        return [
            f"{name} in {where}"
            for name, value in secrets.items()
            if value in text and value != allowed
        ]

    found: list[str] = []
    for label, response in traffic.responses:
        headers = "\n".join(f"{k}: {v}" for k, v in response.headers.items())
        body = response.text
        made_here = next((key for key in creations if key in body), None)
        found += leaks(headers + "\n" + body, label, allowed=made_here)
    found += leaks(metrics.text, "/metrics")
    found += leaks(gateway.log.read_text(errors="replace"), "the server log")
    found += leaks(listing.stdout + listing.stderr, "`shipway keys list`")
    with traces.lock:
        exported = b"".join(traces.raw)
        span_count = len(traces.spans)
    assert span_count > 20, "the traces were searched"
    found += leaks(exported.decode("latin-1"), "the exported spans")
    assert gateway.data_dir is not None
    for path in sorted(gateway.data_dir.rglob("*")):
        if path.is_file():
            found += leaks(path.read_bytes().decode("latin-1"), str(path))
    assert not found, "\n".join(found)

    # The upstream got its own key and none of the client's.
    assert len(traffic.upstream_saw) == 2
    for seen in traffic.upstream_saw:
        assert seen["headers"]["Authorization"] == f"Bearer {UPSTREAM_KEY}"
        assert "api_key" not in seen["body"]
        text = json.dumps(seen)
        assert [name for name, value in secrets.items() if value in text] == ["upstream key"]
    assert "request" in gateway.log.read_text()  # the access log was on and searched


def test_an_upstream_quoting_our_key_does_not_leak_it(gateway: Server) -> None:
    user = create_key(gateway, "leak-probe", env=ENV)
    response = httpx.post(
        gateway.base + "/v1/chat/completions",
        headers=bearer(user.key),
        json=_chat("leaky"),
        timeout=30,
    )
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_auth_failed"
    assert UPSTREAM_KEY not in response.text
