"""`shipway costs` as a user runs it: a subprocess on a SQLite database filled by the store.

Run as a subprocess, never in-process: Typer's runner would reconfigure structlog for the
tests that follow.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from shipway.store import Database
from shipway.store.spend import CallCost, SpendStore

SHIPWAY = str(Path(sys.executable).parent / "shipway")
NOW = datetime.now(UTC)


def _row(
    n: int, team: str | None, tags: list[str] | None, cost: float, **extra: object
) -> CallCost:
    fields: dict[str, object] = {
        "request_id": f"req-{n}",
        "at": NOW - timedelta(hours=n),
        "key_id": 1,
        "key_name": "app",
        "team": team,
        "user": None,
        "tags": tags,
        "model_requested": "smollm2-135m",
        "model_served": "smollm2-135m",
        "prompt_tokens": 100,
        "completion_tokens": 20,
        "cost": cost,
        **extra,
    }
    return CallCost(**fields)  # type: ignore[arg-type]


async def _fill(url: str) -> None:
    database = Database(url)
    await database.start()
    try:
        await SpendStore(database).append(
            [
                _row(1, "search", ["ads", "eu"], 0.25),
                _row(2, "search", ["ads"], 0.5, saved=0.125, cached=True),
                _row(3, "ml", None, 2.0, completion_tokens=400),
                # Ten days old: outside `--since 7d`.
                _row(240, "ml", ["ads"], 64.0),
            ]
        )
    finally:
        await database.stop()


@pytest.fixture(scope="module")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('costs') / 'shipway.db'}"
    asyncio.run(_fill(url))
    return url


def costs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SHIPWAY, "costs", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_json_by_team_sums_the_last_seven_days(database_url: str) -> None:
    result = costs(
        "--by", "team", "--since", "7d", "--format", "json", "--database-url", database_url
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["object"], report["by"], report["currency"]) == ("list", "team", "USD")
    since = datetime.fromisoformat(report["since"])
    assert timedelta(days=7) <= datetime.now(UTC) - since < timedelta(days=7, minutes=5)
    assert report["data"] == [
        {
            "team": "ml",
            "requests": 1,
            "prompt_tokens": 100,
            "completion_tokens": 400,
            "cost": 2.0,
            "saved": 0.0,
            "cache_hits": 0,
        },
        {
            "team": "search",
            "requests": 2,
            "prompt_tokens": 200,
            "completion_tokens": 40,
            "cost": 0.75,
            "saved": 0.125,
            "cache_hits": 1,
        },
    ]
    assert report["total"]["requests"] == 3 and report["total"]["cost"] == 2.75


def test_csv_by_tag_counts_each_tag_and_the_untagged(database_url: str) -> None:
    result = costs(
        "--by", "tag", "--since", "30d", "--format", "csv", "--database-url", database_url
    )
    assert result.returncode == 0, result.stderr
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows[0] == [
        "tag",
        "requests",
        "prompt_tokens",
        "completion_tokens",
        "cost",
        "saved",
        "cache_hits",
    ]
    by_tag = {row[0]: (int(row[1]), float(row[4])) for row in rows[1:]}
    assert by_tag == {"ads": (3, 64.75), "": (1, 2.0), "eu": (1, 0.25)}


def test_the_table_has_a_totals_row_in_the_configured_currency(
    database_url: str, tmp_path: Path
) -> None:
    config = tmp_path / "shipway.yaml"
    config.write_text(yaml.safe_dump({"telemetry": {"currency": "EUR"}}))
    result = costs("--by", "key", "--config", str(config), "--database-url", database_url)
    assert result.returncode == 0, result.stderr
    assert "spend by key since" in result.stdout and "(EUR)" in result.stdout
    lines = result.stdout.splitlines()
    assert any(line.split("│")[1].strip() == "app (1)" for line in lines if "│" in line)
    total = next(line for line in lines if "total" in line)
    assert [cell.strip() for cell in total.split("│")[1:-1]] == [
        "total",
        "3",
        "300",
        "440",
        "2.750000",
        "0.125000",
        "1",
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "yesterday"], "--since 'yesterday': use 30m, 24h, 7d, 2w or an ISO date"),
        (["--by", "region"], "--by 'region': use one of team, key, model, tag, user"),
        (["--format", "xml"], "--format 'xml': use one of table, csv, json"),
        (["--since", "1d", "--until", "2d"], "--until must be after --since"),
    ],
)
def test_bad_options_exit_2_naming_the_option(
    database_url: str, args: list[str], message: str
) -> None:
    result = costs(*args, "--database-url", database_url)
    assert result.returncode == 2
    assert message in result.stderr and result.stdout == ""


def test_no_database_exits_1_and_says_where_it_looked(tmp_path: Path) -> None:
    result = costs("--data-dir", str(tmp_path / "nothing"))
    assert result.returncode == 1
    assert f"no database at {tmp_path / 'nothing' / 'shipway.db'}" in result.stderr


def test_iso_dates_bound_the_period(database_url: str) -> None:
    start = (NOW - timedelta(days=11)).date().isoformat()
    end = (NOW - timedelta(days=2)).isoformat()
    args = ["--by", "model", "--since", start, "--until", end, "--format", "json"]
    result = costs(*args, "--database-url", database_url)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [(line["model"], line["requests"], line["cost"]) for line in report["data"]] == [
        ("smollm2-135m", 1, 64.0)
    ]
