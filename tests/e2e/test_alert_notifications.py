"""An alert fires and resolves against webhook receivers started here, with errors induced
through the fake upstream, in a real `shipway serve`."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from tests.support.servers import Server, shipway_server

SLACK_PATH = "/services/T000/B000/not-to-be-logged"


class Receiver:
    """A webhook receiver on loopback, in a thread: keeps (path, JSON body) of each POST."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with outer.lock:
                    outer.seen.append((self.path, json.loads(body)))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def bodies(self, path: str) -> list[dict[str, Any]]:
        with self.lock:
            return [body for p, body in self.seen if p == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    yield rec
    rec.close()


@pytest.fixture(scope="module")
def gateway(upstream: Server, receiver: Receiver) -> Iterator[Server]:
    base = upstream.base + "/v1"
    srv = shipway_server(
        {
            "embedded_models": False,
            "auth": {"public_metrics": True},
            "models": {
                "flaky": {"backend": "openai", "base_url": base, "upstream_model": "fail-500"},
                "fine": {"backend": "openai", "base_url": base, "upstream_model": "echo"},
            },
            "alerts": {
                "evaluation_interval_s": 0.5,
                "default_rules": False,
                "rules": [
                    {
                        "name": "errors",
                        "kind": "error_rate",
                        "severity": "critical",
                        "window_s": 4,
                        "for_s": 0,
                        "min_requests": 3,
                        "threshold": 0.5,
                        "baseline_factor": 0,
                    }
                ],
                "webhooks": [
                    {"name": "generic", "url": receiver.base + "/generic", "retries": 1},
                    {"name": "chat", "format": "slack", "url_env": "TEST_SLACK_URL"},
                ],
            },
        },
        env={"TEST_SLACK_URL": receiver.base + SLACK_PATH},
    )
    yield srv
    srv.stop()


def wait_for(check: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"not true within {timeout_s} s")


def chat(gateway: Server, model: str) -> int:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return httpx.post(gateway.base + "/v1/chat/completions", json=body, timeout=30).status_code


def test_errors_fire_one_notification_then_resolve_once(
    gateway: Server, receiver: Receiver
) -> None:
    assert chat(gateway, "fine") == 200
    statuses = {chat(gateway, "flaky") for _ in range(5)}
    assert min(statuses) >= 500

    def both(status: str) -> bool:
        generic = [b for b in receiver.bodies("/generic") if b["status"] == status]
        slack = [b for b in receiver.bodies(SLACK_PATH) if status.upper() in b["text"]]
        return bool(generic) and bool(slack)

    wait_for(lambda: both("firing"), 15)
    [firing] = receiver.bodies("/generic")
    assert firing["rule"] == "errors" and firing["model"] == "flaky"
    assert firing["severity"] == "critical" and firing["kind"] == "error_rate"
    assert firing["value"] == 1.0 and firing["threshold"] == 0.5
    assert firing["fingerprint"] == "errors/flaky" and "flaky" in firing["summary"]
    assert isinstance(firing["since"], float) and firing["source"] == "shipway"
    [slack] = receiver.bodies(SLACK_PATH)
    assert slack["text"].startswith("[FIRING] errors (critical · model flaky")
    assert slack["blocks"][0]["text"]["type"] == "mrkdwn"

    # Still failing through more evaluations: no repeat.
    for _ in range(3):
        chat(gateway, "flaky")
        time.sleep(0.5)
    assert len(receiver.bodies("/generic")) == 1

    # Only successes from now on: the failures leave the 4 s window and it resolves.
    wait_for(lambda: both("resolved"), 20)
    time.sleep(1.5)  # a few more evaluations: still exactly one of each
    generic = receiver.bodies("/generic")
    assert [b["status"] for b in generic] == ["firing", "resolved"]
    assert generic[1]["since"] == firing["since"] and generic[1]["at"] > firing["at"]
    assert [b["text"].split()[0] for b in receiver.bodies(SLACK_PATH)] == [
        "[FIRING]",
        "[RESOLVED]",
    ]
    assert chat(gateway, "fine") == 200

    metrics = httpx.get(gateway.base + "/metrics", timeout=10).text
    assert 'shipway_alerts_total{rule="errors",state="firing"} 1.0' in metrics
    assert 'shipway_alerts_total{rule="errors",state="resolved"} 1.0' in metrics
    log = gateway.log.read_text()
    assert "alert firing" in log and "alert resolved" in log
    assert "not-to-be-logged" not in log  # the Slack URL is a secret
