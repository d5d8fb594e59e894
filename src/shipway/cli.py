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
) -> None:
    """Serve the OpenAI-compatible API (with no config: the two embedded models)."""
    flags = {"host": host, "port": port, "log_level": log_level, "log_format": log_format}
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


def main() -> None:
    app()
