"""`shipway db upgrade` and `db current` through the real command, in a subprocess."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from shipway.store.migrate import head_revision


def shipway(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SHIPWAY_")}
    return subprocess.run(
        [sys.executable, "-m", "shipway", *args],
        cwd=cwd,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {name for (name,) in rows}


def test_db_upgrade_creates_the_tables_in_the_data_dir_and_is_idempotent(tmp_path: Path) -> None:
    first = shipway("db", "upgrade", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    database = tmp_path / "shipway-data" / "shipway.db"
    assert f"upgraded empty -> {head_revision()}" in first.stdout
    assert {"teams", "api_keys", "audit_log", "alembic_version"} <= tables(database)
    assert (database.parent.stat().st_mode & 0o777) == 0o700

    second = shipway("db", "upgrade", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "already the newest" in second.stdout

    current = shipway("db", "current", cwd=tmp_path)
    assert current.returncode == 0, current.stderr
    assert f"schema {head_revision()}; newest {head_revision()}" in current.stdout


def test_db_upgrade_takes_the_data_dir_from_a_flag_or_the_environment(tmp_path: Path) -> None:
    flag = shipway("db", "upgrade", "--data-dir", str(tmp_path / "by-flag"), cwd=tmp_path)
    assert flag.returncode == 0, flag.stderr
    assert "audit_log" in tables(tmp_path / "by-flag" / "shipway.db")
    env = shipway("db", "upgrade", cwd=tmp_path, env={"SHIPWAY_DATA_DIR": str(tmp_path / "by-env")})
    assert env.returncode == 0, env.stderr
    assert "audit_log" in tables(tmp_path / "by-env" / "shipway.db")


def test_db_upgrade_on_postgresql_by_url(fresh_postgres_url: str, tmp_path: Path) -> None:
    env = {"SHIPWAY_DATABASE_URL": fresh_postgres_url}
    first = shipway("db", "upgrade", cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr
    assert "postgresql+asyncpg://" in first.stdout and "upgraded empty" in first.stdout
    current = shipway("db", "current", "--database-url", fresh_postgres_url, cwd=tmp_path)
    assert f"schema {head_revision()};" in current.stdout
    assert not (tmp_path / "shipway-data").exists()


def test_db_upgrade_explains_a_bad_or_unreachable_database(tmp_path: Path) -> None:
    wrong = shipway("db", "upgrade", "--database-url", "mysql://root@127.0.0.1/x", cwd=tmp_path)
    assert wrong.returncode == 2
    assert "postgresql://" in wrong.stderr
    gone = shipway(
        "db", "upgrade", "--database-url", "postgresql://u:hunter2@127.0.0.1:1/x", cwd=tmp_path
    )
    assert gone.returncode == 1
    assert "cannot be used" in gone.stderr and "hunter2" not in gone.stderr + gone.stdout
    assert "Traceback" not in gone.stderr
