"""`GET /admin/costs` on a real `shipway serve`, over spend rows written to its database.

The rows are written through the store (as the server's ledger writes them), so the numbers
are known exactly; that requests reach the ledger is the pipeline's test.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from tests.support.keys import bearer, create_key
from tests.support.servers import Server, shipway_server

from shipway.store import Database
from shipway.store.spend import CallCost, SpendStore

NOW = datetime.now(UTC)


def _row(n: int, team: str | None, tags: list[str] | None, cost: float) -> CallCost:
    return CallCost(
        request_id=f"req-{n}",
        at=NOW - timedelta(hours=n),
        key_id=None,
        key_name=None,
        team=team,
        user=f"user-{n % 2}",
        tags=tags,
        model_requested="m",
        model_served="m",
        prompt_tokens=10,
        completion_tokens=1,
        cost=cost,
    )


async def _fill(url: str) -> None:
    database = Database(url)
    await database.start()
    try:
        await SpendStore(database).append(
            [
                _row(1, "search", ["ads"], 0.5),
                _row(2, "search", None, 0.25),
                _row(3, "ml", ["ads", "eu"], 4.0),
                _row(200, "ml", None, 100.0),  # over a week old
            ]
        )
    finally:
        await database.stop()


@pytest.fixture(scope="module")
def gateway(upstream: Server) -> Iterator[Server]:
    echo = {"backend": "openai", "base_url": upstream.base + "/v1", "upstream_model": "echo"}
    srv = shipway_server({"embedded_models": False, "models": {"m": echo}})
    assert srv.data_dir is not None
    asyncio.run(_fill(f"sqlite:///{srv.data_dir / 'shipway.db'}"))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def keys(gateway: Server) -> dict[str, str]:
    return {
        "admin": create_key(gateway, "root", "--admin").key,
        "search_admin": create_key(gateway, "lead", "--team", "search", "--admin").key,
        "user": create_key(gateway, "app", "--team", "search").key,
    }


def _get(http: httpx.Client, gateway: Server, key: str | None, query: str) -> httpx.Response:
    headers = bearer(key) if key else {}
    return http.get(f"{gateway.base}/admin/costs{query}", headers=headers)


def _groups(body: dict[str, Any], by: str) -> list[tuple[Any, int, float]]:
    return [(line[by], line["requests"], line["cost"]) for line in body["data"]]


def test_an_admin_sees_spend_by_team_for_the_last_week(
    http: httpx.Client, gateway: Server, keys: dict[str, str]
) -> None:
    response = _get(http, gateway, keys["admin"], "?by=team&since=7d")
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["object"], body["by"], body["currency"], body["until"]) == (
        "list",
        "team",
        "USD",
        None,
    )
    assert datetime.fromisoformat(body["since"]) < NOW - timedelta(days=6)
    assert _groups(body, "team") == [("ml", 1, 4.0), ("search", 2, 0.75)]
    assert body["total"]["requests"] == 3 and body["total"]["cost"] == 4.75
    by_tag = _get(http, gateway, keys["admin"], "?by=tag&since=30d").json()
    assert _groups(by_tag, "tag") == [(None, 2, 100.25), ("ads", 2, 4.5), ("eu", 1, 4.0)]


def test_a_team_admin_sees_its_own_team_only(
    http: httpx.Client, gateway: Server, keys: dict[str, str]
) -> None:
    body = _get(http, gateway, keys["search_admin"], "?by=user&since=7d").json()
    assert _groups(body, "user") == [("user-1", 1, 0.5), ("user-0", 1, 0.25)]
    assert body["total"]["cost"] == 0.75


def test_only_admin_keys_may_read_costs(
    http: httpx.Client, gateway: Server, keys: dict[str, str]
) -> None:
    assert _get(http, gateway, None, "").status_code == 401
    refused = _get(http, gateway, keys["user"], "")
    assert refused.status_code == 403
    assert "needs an admin key" in refused.json()["error"]["message"]


@pytest.mark.parametrize(
    ("query", "param", "message"),
    [
        ("?by=region", "by", "by 'region': use one of team, key, model, tag, user"),
        ("?since=yesterday", "since", "since 'yesterday': use 30m, 24h, 7d, 2w or an ISO date"),
        ("?since=1d&until=2d", "until", "until must be after since"),
        ("?until=soon", "until", "until 'soon'"),
    ],
)
def test_bad_parameters_are_400_naming_the_parameter(
    http: httpx.Client, gateway: Server, keys: dict[str, str], query: str, param: str, message: str
) -> None:
    response = _get(http, gateway, keys["admin"], query)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param and message in error["message"]
    assert error["type"] == "invalid_request_error"
