"""`shipway stats --url` and the dashboard's HTTP surface, against a real server."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator

import httpx
import openai
import pytest
from tests.support.keys import bearer, create_key, wait_until
from tests.support.servers import SINGLE_ATTEMPT, Server, free_port, shipway_server


def _config(upstream: Server) -> dict[str, object]:
    base = upstream.base + "/v1"
    return {
        "embedded_models": False,
        "resilience": SINGLE_ATTEMPT,  # each fault counted once, not retried
        "models": {
            "up": {"backend": "openai", "base_url": base, "upstream_model": "echo"},
            "up-500": {"backend": "openai", "base_url": base, "upstream_model": "fail-500"},
        },
    }


@pytest.fixture(scope="module")
def gateway(upstream: Server) -> Iterator[Server]:
    srv = shipway_server(_config(upstream))
    client = openai.OpenAI(base_url=srv.base + "/v1", api_key="x", max_retries=0, timeout=30)
    for _ in range(5):
        client.chat.completions.create(model="up", messages=[{"role": "user", "content": "hi"}])
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(
                model="up-500", messages=[{"role": "user", "content": "x"}]
            )
    # The summary counts the seconds that have passed: wait for the last one to pass.
    summary = srv.base + "/dashboard/api/summary"
    wait_until(lambda: httpx.get(summary).json()["totals"]["requests"] == 7, 5)
    yield srv
    srv.stop()


def _stats(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shipway", "stats", *args],
        capture_output=True,
        text=True,
        timeout=60,
        # Wide enough that Rich does not fold the model table.
        env={**os.environ, "COLUMNS": "220", **(env or {})},
    )


def test_stats_prints_totals_models_and_alerts(gateway: Server) -> None:
    result = _stats("--url", gateway.base)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "models" in out and "alerts: none firing" in out
    assert re.search(r"requests\s+7 \(0\.\d+/s\)", out), out  # the totals, with a rate
    assert "upstream_error 2" in out
    up = next(line for line in out.splitlines() if line.split()[:1] == ["up"])
    assert "serving" in up and " 5 " in up, up
    failing = next(line for line in out.splitlines() if line.split()[:1] == ["up-500"])
    assert "2 (100.0%)" in failing


def test_stats_accepts_the_v1_url_clients_use(gateway: Server) -> None:
    assert _stats("--url", gateway.base + "/v1/", "--window", "60").returncode == 0


def test_stats_watch_redraws_until_interrupted(gateway: Server) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "shipway", "stats", "--url", gateway.base, "--watch",
         "--interval", "0.5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "220"},
    )  # fmt: skip
    try:
        proc.wait(timeout=3)
        pytest.fail(f"--watch ended by itself: {proc.stderr.read() if proc.stderr else ''}")
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "up-500" in out


def test_stats_says_in_one_line_when_the_server_is_unreachable() -> None:
    result = _stats("--url", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "cannot reach" in result.stderr, result.stderr


def test_stats_rejects_a_url_that_is_not_http() -> None:
    result = _stats("--url", "127.0.0.1:8700")
    assert result.returncode == 1 and "http://" in result.stderr


def test_summary_window_is_checked_and_capped_at_the_history(gateway: Server) -> None:
    summary = gateway.base + "/dashboard/api/summary"
    bad = httpx.get(summary, params={"window": "1e3"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "window"
    assert httpx.get(summary, params={"window": "5"}).status_code == 400
    capped = httpx.get(summary, params={"window": "99999999"})
    assert capped.status_code == 200 and capped.json()["window_s"] == 3600
    assert capped.headers["cache-control"] == "no-store"


def test_assets_are_served_by_fixed_names_with_strict_headers(gateway: Server) -> None:
    script = httpx.get(gateway.base + "/dashboard/app.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert script.headers["x-content-type-options"] == "nosniff"
    again = httpx.get(
        gateway.base + "/dashboard/app.js", headers={"If-None-Match": script.headers["etag"]}
    )
    assert again.status_code == 304
    assert httpx.get(gateway.base + "/dashboard/vendor/uplot/LICENSE").status_code == 404
    assert httpx.get(gateway.base + "/dashboard/static/app.js").status_code == 404


@pytest.fixture(scope="module")
def keyed(upstream: Server) -> Iterator[Server]:
    srv = shipway_server(_config(upstream))
    yield srv
    srv.stop()


def test_stats_with_keys_needs_an_admin_key(keyed: Server) -> None:
    admin = create_key(keyed, "ops", "--admin").key
    user = create_key(keyed, "app").key
    summary = keyed.base + "/dashboard/api/summary"
    wait_until(lambda: httpx.get(summary).status_code == 401, 10)
    assert httpx.get(summary, headers=bearer(admin)).status_code == 200

    missing = _stats("--url", keyed.base)
    assert missing.returncode == 1 and missing.stdout == ""
    assert "401" in missing.stderr and "admin key" in missing.stderr
    assert missing.stderr.count("\n") == 1
    refused = _stats("--url", keyed.base, "--key", user)
    assert refused.returncode == 1 and "403" in refused.stderr
    ok = _stats("--url", keyed.base, env={"SHIPWAY_API_KEY": admin})
    assert ok.returncode == 0, ok.stderr
    assert "up-500" in ok.stdout
