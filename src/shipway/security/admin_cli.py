"""The ``shipway keys`` and ``shipway teams`` commands' work, on the server's own store.

Each command opens the database the server of the same settings uses (migrating it if it is
new), does one thing in one transaction, appends the audit record (principal ``cli``) and
prints the result. Errors are printed as one line: exit 1 for a refusal (no such key, name
taken), 2 for a configuration problem.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from shipway.config import ShipwaySettings
from shipway.errors import ConfigError, ShipwayError
from shipway.security.audit import AuditLog
from shipway.security.key_service import (
    KeyService,
    KeySpec,
    build_key_service,
    key_view,
    parse_models,
)
from shipway.store import Database
from shipway.store.keys import KeyRecord
from shipway.store.teams import create_team, list_teams

__all__ = ["AdminCli", "parse_expiry"]

_T = TypeVar("_T")
_DURATION = re.compile(r"^([1-9][0-9]*)([dhm])$")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}
_POLICIES = {"injection": ("block", "flag", "off"), "pii": ("redact", "block", "off")}


def parse_expiry(value: str | None, now: datetime) -> datetime | None:
    """``30d``, ``12h``, ``90m`` from now, or an ISO date/time (UTC unless it says)."""
    if value is None:
        return None
    match = _DURATION.match(value.strip())
    if match:
        return now + timedelta(**{_UNITS[match[2]]: int(match[1])})
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"--expires {value!r}: use 30d, 12h, 90m or an ISO date") from None
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    if when <= now:
        raise ConfigError(f"--expires {value!r} is in the past")
    return when


class AdminCli:
    def __init__(self, settings: ShipwaySettings) -> None:
        self.settings = settings
        self.console = Console()

    def _run(self, work: Callable[[KeyService, Database, AuditLog], Awaitable[_T]]) -> _T:
        async def run() -> _T:
            database = Database.from_settings(self.settings)
            await database.start()
            audit = AuditLog(database, self.settings, os.environ)
            try:
                keys = build_key_service(self.settings, database, os.environ)
                await audit.start()
                try:
                    return await work(keys, database, audit)
                finally:
                    await audit.stop()
            finally:
                await database.stop()

        try:
            return asyncio.run(run())
        except ConfigError as exc:
            typer.echo(f"configuration error: {exc}", err=True)
            raise typer.Exit(2) from None
        except ShipwayError as exc:
            typer.echo(f"error: {exc.message}", err=True)
            raise typer.Exit(1) from None

    def create(
        self,
        *,
        name: str,
        team: str | None,
        models: str | None,
        rpm: int | None,
        tpm: int | None,
        max_tokens: int | None,
        max_prompt_tokens: int | None,
        injection: str | None,
        pii: str | None,
        expires: str | None,
        admin: bool,
    ) -> None:
        guards = {}
        for guard, value in (("injection", injection), ("pii", pii)):
            if value is not None:
                if value not in _POLICIES[guard]:
                    typer.echo(f"--{guard} must be one of {', '.join(_POLICIES[guard])}", err=True)
                    raise typer.Exit(2)
                guards[guard] = value

        async def work(keys: KeyService, _db: Database, audit: AuditLog) -> tuple[str, KeyRecord]:
            spec = KeySpec(
                name=name,
                team=team,
                models=parse_models(models),
                rpm=rpm,
                tpm=tpm,
                max_tokens=max_tokens,
                max_prompt_tokens=max_prompt_tokens,
                guards=guards or None,
                expires_at=parse_expiry(expires, datetime.now(UTC)),
                admin=admin,
            )
            secret, record = await keys.create(spec, actor=None)
            _audit(audit, "admin.key.create", record)
            return secret, record

        secret, record = self._run(work)
        typer.echo(secret)
        typer.echo(
            f"key {record.id} ({record.prefix}…, {'admin' if record.admin else 'user'}) "
            "created; this is the only time it is shown",
            err=True,
        )

    def list_keys(self) -> None:
        async def work(keys: KeyService, _db: Database, _audit: AuditLog) -> list[KeyRecord]:
            return await keys.list(actor=None)

        records = self._run(work)
        table = Table(title="keys")
        for column in ("id", "prefix", "name", "team", "models", "rpm", "tpm", "admin", "state"):
            table.add_column(column)
        now = datetime.now(UTC)
        for key in records:
            table.add_row(
                str(key.id),
                key.prefix,
                key.name,
                "" if key.team_id is None else str(key.team_id),
                "all" if key.models is None else ",".join(key.models),
                _opt(key.rpm),
                _opt(key.tpm),
                "yes" if key.admin else "",
                _state(key, now),
            )
        self.console.print(table)

    def revoke(self, key_id: int) -> None:
        async def work(keys: KeyService, _db: Database, audit: AuditLog) -> KeyRecord:
            record = await keys.revoke(key_id, actor=None)
            _audit(audit, "admin.key.revoke", record)
            return record

        record = self._run(work)
        typer.echo(f"key {record.id} ({record.prefix}…) revoked")

    def rotate(self, key_id: int, grace_s: float) -> None:
        async def work(
            keys: KeyService, _db: Database, audit: AuditLog
        ) -> tuple[str, KeyRecord, KeyRecord]:
            secret, new, old = await keys.rotate(key_id, actor=None, grace_s=grace_s)
            _audit(audit, "admin.key.rotate", new, replaced=old.id)
            return secret, new, old

        secret, new, old = self._run(work)
        typer.echo(secret)
        when = f"in {grace_s:g} s" if grace_s else "now"
        typer.echo(f"key {new.id} replaces key {old.id}, which stops working {when}", err=True)

    def create_team(self, name: str, models: str | None, rpm: int | None, tpm: int | None) -> None:
        async def work(_keys: KeyService, database: Database, audit: AuditLog) -> int:
            async with database.transaction() as session:
                team = await create_team(
                    session, name, models=parse_models(models), rpm=rpm, tpm=tpm
                )
            audit.record(
                "admin.team.create",
                principal="cli",
                request_id=None,
                data={
                    "team": {
                        "id": team.id,
                        "name": team.name,
                        "models": team.models,
                        "rpm": team.rpm,
                        "tpm": team.tpm,
                    }
                },
            )
            return team.id

        team_id = self._run(work)
        typer.echo(f"team {team_id} ({name}) created")

    def list_teams(self) -> None:
        async def work(_keys: KeyService, database: Database, _audit: AuditLog) -> list[Any]:
            async with database.transaction() as session:
                return await list_teams(session)

        table = Table(title="teams")
        for column in ("id", "name", "models", "rpm", "tpm"):
            table.add_column(column)
        for team in self._run(work):
            models = "all" if team.models is None else ",".join(team.models)
            table.add_row(str(team.id), team.name, models, _opt(team.rpm), _opt(team.tpm))
        self.console.print(table)


def _audit(audit: AuditLog, kind: str, key: KeyRecord, **extra: Any) -> None:
    audit.record(kind, principal="cli", request_id=None, data={"key": key_view(key), **extra})


def _opt(value: int | None) -> str:
    return "" if value is None else str(value)


def _state(key: KeyRecord, now: datetime) -> str:
    if key.revoked_at is not None:
        return "revoked" if key.revoked_at <= now else f"revoking {key.revoked_at:%Y-%m-%d %H:%M}"
    if key.expires_at is not None:
        return "expired" if key.expires_at <= now else f"until {key.expires_at:%Y-%m-%d}"
    return "active"
