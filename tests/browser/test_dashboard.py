"""/dashboard in headless Chromium against a real `shipway serve` with real traffic."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from tests.support.keys import bearer, create_key, wait_until
from tests.support.servers import Server, fake_upstream, shipway_server

pytestmark = pytest.mark.e2e

EMBED = "all-minilm-l6-v2"
CHARTS = ("requests", "errors", "latency", "ttft", "tokens", "cost", "queue", "busy")


@pytest.fixture(scope="module")
def upstream() -> Iterator[Server]:
    srv = fake_upstream()
    yield srv
    srv.stop()


def _upstream_models(upstream: Server) -> dict[str, Any]:
    base = upstream.base + "/v1"
    return {
        "up": {
            "backend": "openai",
            "base_url": base,
            "upstream_model": "echo",
            "price": {"input": 3.0, "output": 15.0},
        },
        "up-500": {"backend": "openai", "base_url": base, "upstream_model": "fail-500"},
    }


@pytest.fixture(scope="module")
def gateway(upstream: Server) -> Iterator[Server]:
    """Upstream models on the fake upstream (instant answers) beside the embedded models."""
    # One rule that fires at once on the failing model, so the alerts list has something.
    failing = {
        "name": "up500_errors",
        "kind": "error_rate",
        "severity": "critical",
        "threshold": 0.5,
        "min_requests": 2,
        "for_s": 0,
        "window_s": 60,
        "models": ["up-500"],
    }
    alerts = {"evaluation_interval_s": 0.5, "rules": [failing]}
    srv = shipway_server({"models": _upstream_models(upstream), "alerts": alerts})
    yield srv
    srv.stop()


def _traffic(base: str, key: str = "x", embed: bool = False, seconds: int = 1) -> None:
    """Plain and streamed chats, upstream 500s and (``embed``) one local embedding, spread
    over ``seconds`` seconds so the charts have more than one point."""
    client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=60)
    for second in range(seconds):
        if second:
            time.sleep(1)
        for i in range(4 + second % 3):
            client.chat.completions.create(
                model="up", messages=[{"role": "user", "content": f"hello number {i}"}]
            )
        stream = client.chat.completions.create(
            model="up", messages=[{"role": "user", "content": "stream me"}], stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        if second % 2 == 0:
            with pytest.raises(openai.InternalServerError):
                client.chat.completions.create(
                    model="up-500", messages=[{"role": "user", "content": "x"}]
                )
    if embed:
        assert client.embeddings.create(model=EMBED, input="hello").data


def _points(page: Any, chart: str) -> int:
    return int(page.get_attribute(f"#chart-{chart}", "data-points") or 0)


def _wait_for_charts(page: Any) -> None:
    page.wait_for_function(
        "() => Number(document.querySelector('#chart-latency')?.dataset.points) > 0",
        timeout=30_000,
    )


def test_dashboard_draws_traffic_live_offline_and_after_a_reload(
    browser: Any, gateway: Server, artifacts: Path
) -> None:
    _traffic(gateway.base, embed=True, seconds=6)
    page = browser.new_page(viewport={"width": 1440, "height": 1100})
    requested: list[str] = []
    problems: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(str(exc)))

    response = page.goto(gateway.base + "/dashboard")
    assert response is not None and response.ok
    headers = response.headers
    assert "default-src 'self'" in headers["content-security-policy"]
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    _wait_for_charts(page)

    assert page.locator("figure.chart canvas").count() == len(CHARTS)
    for chart in ("requests", "errors", "latency", "ttft", "tokens", "cost", "queue", "busy"):
        if chart not in ("queue", "busy"):  # nothing waited: instant answers
            assert _points(page, chart) > 0, chart
    assert page.locator("#key-form").is_hidden()
    assert page.text_content("[data-card=requests-per-s] .card-value") not in ("0", "\u2013")
    assert "%" in (page.text_content("[data-card=error-rate] .card-value") or "")
    assert page.text_content("[data-card=error-rate] .card-value") != "0.0%"
    up_row = page.locator("tr[data-model=up]")
    assert up_row.count() == 1
    assert "serving" in up_row.inner_text()
    embed_row = page.locator(f"tr[data-model='{EMBED}']").inner_text()
    assert "idle" in embed_row or "busy" in embed_row  # worker states
    assert page.locator("tr[data-model=up-500] td.bad").count() == 1
    page.wait_for_selector("#alerts li.alert", timeout=10_000)
    alert = page.locator("#alerts li.alert").first.inner_text()
    assert "up500_errors" in alert and "up-500" in alert, alert
    assert page.text_content("[data-card=alerts] .card-value") == "1"
    page.screenshot(path=str(artifacts / "dashboard.png"), full_page=True)

    # Live: new traffic shows without a reload.
    before = page.text_content("[data-card=requests-per-s] .card-sub")
    _traffic(gateway.base)
    page.wait_for_function(
        "(before) => document.querySelector('[data-card=requests-per-s] .card-sub')"
        ".textContent !== before",
        arg=before,
        timeout=10_000,
    )

    # History is the server's: a reload draws the same charts at once.
    page.reload()
    _wait_for_charts(page)
    assert _points(page, "requests") > 0
    page.emulate_media(color_scheme="dark")  # the charts are redrawn at the next poll
    page.wait_for_timeout(2500)
    assert page.locator("figure.chart canvas").count() == len(CHARTS)
    page.screenshot(path=str(artifacts / "dashboard-dark.png"), full_page=True)

    assert requested, "the page made no request at all"
    off_host = [u for u in requested if not u.startswith(gateway.base + "/")]
    assert off_host == [], f"requests off 127.0.0.1: {off_host}"
    assert problems == [], problems  # no script error, no CSP violation
    page.close()


@pytest.fixture(scope="module")
def keyed_gateway(upstream: Server) -> Iterator[Server]:
    srv = shipway_server({"embedded_models": False, "models": _upstream_models(upstream)})
    yield srv
    srv.stop()


def test_with_keys_the_data_needs_an_admin_key_which_the_page_asks_for(
    browser: Any, keyed_gateway: Server
) -> None:
    admin = create_key(keyed_gateway, "ops", "--admin").key
    user = create_key(keyed_gateway, "app").key
    summary = keyed_gateway.base + "/dashboard/api/summary"
    wait_until(lambda: httpx.get(summary).status_code == 401, 10)
    assert httpx.get(summary, headers=bearer(user)).status_code == 403
    assert httpx.get(summary, headers=bearer(admin)).status_code == 200
    page_html = httpx.get(keyed_gateway.base + "/dashboard")
    assert page_html.status_code == 200 and "admin key" in page_html.text  # public, no data
    _traffic(keyed_gateway.base, key=user)

    page = browser.new_page()
    page.goto(keyed_gateway.base + "/dashboard")
    page.wait_for_selector("#key-form", state="visible")
    assert page.locator("#content").is_hidden()
    page.fill("#key-input", user)
    page.click("#key-form button[type=submit]")
    page.wait_for_function(
        "() => document.querySelector('#key-message').textContent.includes('not an admin key')"
    )
    page.fill("#key-input", admin)
    page.click("#key-form button[type=submit]")
    page.wait_for_selector("#content", state="visible")
    _wait_for_charts(page)
    assert page.locator("tr[data-model=up]").count() == 1
    # The key lives in this tab: a reload keeps it, a new tab (new session) asks again.
    page.reload()
    page.wait_for_selector("#content", state="visible")
    other = browser.new_page()
    other.goto(keyed_gateway.base + "/dashboard")
    other.wait_for_selector("#key-form", state="visible")
    other.close()
    page.close()
