"""The ``shipway`` command. Flags map one to one onto settings fields (env twin: SHIPWAY_…)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from shipway.config import ShipwaySettings, load_settings
from shipway.errors import ConfigError

__all__ = ["app", "main"]

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Shipway: a production layer for AI models."
)
config_app = typer.Typer(no_args_is_help=True, help="Work with shipway.yaml.")
app.add_typer(config_app, name="config")

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", envvar="SHIPWAY_CONFIG", help="Path to shipway.yaml."),
]


def _load(config: Path | None, overrides: dict[str, Any] | None = None) -> ShipwaySettings:
    try:
        return load_settings(config, overrides)
    except ConfigError as exc:
        typer.echo(f"configuration error\n{exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="server.host")] = None,
    port: Annotated[int | None, typer.Option(help="server.port")] = None,
    log_level: Annotated[str | None, typer.Option(help="server.log_level")] = None,
    log_format: Annotated[str | None, typer.Option(help="server.log_format")] = None,
    ssl_certfile: Annotated[Path | None, typer.Option(help="server.ssl_certfile")] = None,
    ssl_keyfile: Annotated[Path | None, typer.Option(help="server.ssl_keyfile")] = None,
) -> None:
    """Serve the OpenAI-compatible API (with no config: the two embedded models)."""
    flags = {
        "host": host,
        "port": port,
        "log_level": log_level,
        "log_format": log_format,
        "ssl_certfile": ssl_certfile,
        "ssl_keyfile": ssl_keyfile,
    }
    server = {k: v for k, v in flags.items() if v is not None}
    settings = _load(config, {"server": server} if server else None)

    from shipway.server import run
    from shipway.telemetry.logging import configure_logging

    configure_logging(settings.server.log_level, settings.server.log_format)
    try:
        run(settings)
    except ConfigError as exc:
        typer.echo(f"configuration error\n{exc}", err=True)
        raise typer.Exit(2) from None


@config_app.command("check")
def config_check(path: Annotated[Path, typer.Argument(help="The YAML file to check.")]) -> None:
    """Validate a configuration file; exit 2 and name each bad key if it is wrong."""
    settings = _load(path)
    _models_table(settings, title=f"{path}: valid")


@app.command()
def models(config: ConfigOption = None) -> None:
    """List the models a configuration serves."""
    _models_table(_load(config))


def _models_table(settings: ShipwaySettings, title: str = "models") -> None:
    table = Table(title=title)
    for column in ("model", "backend", "where", "workers / concurrency"):
        table.add_column(column)
    for alias, model in settings.models.items():
        if model.backend == "openai":
            where, capacity = model.base_url, f"{model.max_concurrency} in flight"
        else:
            where = str(model.path) if model.path else "embedded (PyPI package)"
            capacity = f"{model.workers} x {model.threads} threads"
        table.add_row(alias, model.backend, where, capacity)
    Console().print(table)


db_app = typer.Typer(no_args_is_help=True, help="The database: schema migrations.")
app.add_typer(db_app, name="db")

DatabaseUrlOption = Annotated[
    str | None,
    typer.Option(
        help="database_url. A URL with a password belongs in SHIPWAY_DATABASE_URL, "
        "not on the command line."
    ),
]
DataDirOption = Annotated[Path | None, typer.Option(help="data_dir")]


@db_app.command("upgrade")
def db_upgrade(
    config: ConfigOption = None,
    database_url: DatabaseUrlOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Create the database or bring it to this version's schema (safe to run again)."""
    _db(_store_settings(config, database_url, data_dir), upgrade=True)


@db_app.command("current")
def db_current(
    config: ConfigOption = None,
    database_url: DatabaseUrlOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Show the database's schema revision and the newest this version ships."""
    _db(_store_settings(config, database_url, data_dir), upgrade=False)


def _store_settings(
    config: Path | None, database_url: str | None, data_dir: Path | None
) -> ShipwaySettings:
    flags = {"database_url": database_url, "data_dir": data_dir}
    return _load(config, {k: v for k, v in flags.items() if v is not None} or None)


def _db(settings: ShipwaySettings, *, upgrade: bool) -> None:
    import asyncio

    from shipway.errors import StoreUnavailable
    from shipway.store.database import Database
    from shipway.store.migrate import head_revision

    async def run() -> tuple[str, str | None, str | None]:
        database = Database.from_settings(settings)
        await database.start(migrate_schema=False)
        try:
            before = await database.revision()
            if upgrade:
                await database.upgrade()
            return database.display_url, before, await database.revision()
        finally:
            await database.stop()

    try:
        url, before, after = asyncio.run(run())
    except (ConfigError, StoreUnavailable) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2 if isinstance(exc, ConfigError) else 1) from None
    head = head_revision()
    if not upgrade:
        state = after or "empty (run `shipway db upgrade`)"
        typer.echo(f"{url}: schema {state}; newest {head}")
    elif before == after:
        typer.echo(f"{url}: schema {after} already the newest; nothing to do")
    else:
        typer.echo(f"{url}: schema upgraded {before or 'empty'} -> {after}")


guard_app = typer.Typer(no_args_is_help=True, help="The prompt-injection guard, offline.")
app.add_typer(guard_app, name="guard")


@guard_app.command("scan")
def guard_scan(
    path: Annotated[Path, typer.Argument(help='JSON Lines of {"text": ...} objects; - is stdin.')],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Instead of stdout.")
    ] = None,
    threshold: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="Instead of the shipped threshold.")
    ] = None,
) -> None:
    """Score each line's "text" for prompt injection; write the line back with "flagged" and
    "score". Exit 1: bad lines (named on stderr, skipped); exit 2: unreadable input."""
    from shipway.security.scan_file import scan_file

    raise typer.Exit(scan_file(path, output, threshold))


def main() -> None:
    app()
