"""Store settings: where the database lives, which URL form, and no secrets in the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from shipway.config import load_settings
from shipway.errors import ConfigError
from shipway.store.urls import async_url, database_url, redact, sqlite_path


def test_the_default_database_is_a_sqlite_file_in_the_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert settings.data_dir == Path("shipway-data") and settings.database_url is None
    url = database_url(settings)
    assert url == f"sqlite+aiosqlite:///{tmp_path}/shipway-data/shipway.db"
    assert sqlite_path(url) == tmp_path / "shipway-data" / "shipway.db"


def test_urls_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHIPWAY_DATABASE_URL", "postgresql://app:pw@db:5432/shipway")
    monkeypatch.setenv("SHIPWAY_REDIS_URL", "redis://:pw@cache:6379/0")
    monkeypatch.setenv("SHIPWAY_DATA_DIR", "/var/lib/shipway")
    settings = load_settings()
    assert database_url(settings) == "postgresql+asyncpg://app:pw@db:5432/shipway"
    assert settings.redis_url == "redis://:pw@cache:6379/0"
    assert settings.data_dir == Path("/var/lib/shipway")


@pytest.mark.parametrize("key", ["database_url", "redis_url"])
def test_a_password_in_the_file_is_refused(tmp_path: Path, key: str) -> None:
    scheme = "postgresql" if key == "database_url" else "redis"
    path = tmp_path / "shipway.yaml"
    path.write_text(f"{key}: {scheme}://user:hunter2@host/0\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert f"SHIPWAY_{key.upper()}" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_a_url_without_a_password_may_be_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "shipway.yaml"
    path.write_text("database_url: postgresql://shipway@db/shipway\nredis_url: redis://cache\n")
    settings = load_settings(path)
    assert database_url(settings) == "postgresql+asyncpg://shipway@db/shipway"


@pytest.mark.parametrize(
    ("key", "value", "hint"),
    [
        ("database_url", "mysql://root@db/x", "postgresql://"),
        ("redis_url", "http://cache", "redis://"),
    ],
)
def test_unsupported_schemes_are_named(tmp_path: Path, key: str, value: str, hint: str) -> None:
    path = tmp_path / "shipway.yaml"
    path.write_text(f"{key}: {value}\n")
    with pytest.raises(ConfigError, match=hint):
        load_settings(path)


def test_urls_are_turned_to_async_drivers_and_redacted() -> None:
    assert async_url("postgres://u@h/d") == "postgresql+asyncpg://u@h/d"
    assert async_url("sqlite:///rel.db") == "sqlite+aiosqlite:///rel.db"
    assert async_url("postgresql+asyncpg://u@h/d") == "postgresql+asyncpg://u@h/d"
    with pytest.raises(ConfigError, match="not supported"):
        async_url("postgresql+psycopg2://u@h/d")
    assert "hunter2" not in redact("postgresql://u:hunter2@h/d")
    assert sqlite_path("sqlite+aiosqlite:///:memory:") is None
    assert sqlite_path("postgresql+asyncpg://u@h/d") is None
