"""The ``shipway`` command. Flags map one to one onto settings fields (env twin: SHIPWAY_…)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from shipway.config import LlamaCppModel, OpenAIUpstreamModel, ShipwaySettings, load_settings
from shipway.errors import ConfigError

__all__ = ["app", "main"]

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Shipway: a production layer for AI models."
)
config_app = typer.Typer(no_args_is_help=True, help="Work with shipway.yaml.")


@app.callback()
def _logging() -> None:
    # Warnings go to stderr as readable lines: stdout carries only a command's result, so
    # `KEY=$(shipway keys create ...)` holds the key and nothing else. `serve` reconfigures.
    from shipway.telemetry.logging import configure_logging

    configure_logging("warning", "console")


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
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure", help="auth.insecure: serve a non-loopback address with no API key."
        ),
    ] = False,
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
    overrides: dict[str, Any] = {"server": server} if server else {}
    if insecure:
        overrides["auth"] = {"insecure": True}
    settings = _load(config, overrides or None)

    from shipway.server import run
    from shipway.telemetry.logging import configure_logging

    configure_logging(settings.server.log_level, settings.server.log_format)
    from shipway.errors import StoreUnavailable

    try:
        run(settings)
    except ConfigError as exc:
        typer.echo(f"configuration error\n{exc}", err=True)
        raise typer.Exit(2) from None
    except StoreUnavailable as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None


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
    # The names whole, so they can be copied and searched for; the rest folded, not cut
    # with "…": this table is where a user checks a URL or a default.
    for column in ("model", "backend"):
        table.add_column(column, no_wrap=True)
    for column in ("where", "workers / concurrency", "defaults"):
        table.add_column(column, overflow="fold")
    for alias, model in settings.models.items():
        if model.backend == "openai":
            where, capacity = model.base_url, f"{model.max_concurrency} in flight"
        else:
            where = str(model.path) if model.path else "embedded (PyPI package)"
            capacity = f"{model.workers} x {model.threads} threads"
        defaults = ""
        if isinstance(model, LlamaCppModel | OpenAIUpstreamModel):
            shown = model.defaults.model_dump(exclude_none=True)
            defaults = "\n".join(f"{key}={value}" for key, value in shown.items())
        table.add_row(alias, model.backend, where, capacity, defaults)
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


# -- keys and teams (security) --
keys_app = typer.Typer(no_args_is_help=True, help="API keys: make, list, revoke, rotate.")
app.add_typer(keys_app, name="keys")
teams_app = typer.Typer(no_args_is_help=True, help="Teams: shared model lists and limits.")
app.add_typer(teams_app, name="teams")

ModelsOption = Annotated[
    str | None, typer.Option(help="Comma-separated models it may use (default: all).")
]


def _admin(config: Path | None, database_url: str | None, data_dir: Path | None) -> Any:
    """Run one admin step against the store the server of these settings uses."""
    from shipway.security.admin_cli import AdminCli

    return AdminCli(_store_settings(config, database_url, data_dir))


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="Who or what the key is for.")],
    team: Annotated[str | None, typer.Option(help="Team (made if it does not exist).")] = None,
    models: ModelsOption = None,
    rpm: Annotated[int | None, typer.Option(min=1, help="Requests per minute.")] = None,
    tpm: Annotated[int | None, typer.Option(min=1, help="Tokens per minute.")] = None,
    max_tokens: Annotated[
        int | None, typer.Option(min=1, help="Largest max_tokens it may ask for.")
    ] = None,
    max_prompt_tokens: Annotated[
        int | None, typer.Option(min=1, help="Largest prompt it may send, in tokens.")
    ] = None,
    injection: Annotated[
        str | None, typer.Option(help="Injection guard for this key: block, flag or off.")
    ] = None,
    pii: Annotated[
        str | None, typer.Option(help="PII guard for this key: redact, block or off.")
    ] = None,
    expires: Annotated[
        str | None, typer.Option(help="When it stops working: 30d, 12h, 90m or an ISO date.")
    ] = None,
    admin: Annotated[bool, typer.Option("--admin", help="May manage keys.")] = False,
    config: ConfigOption = None,
    database_url: DatabaseUrlOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Make a key and print it once (only its keyed hash is stored)."""
    _admin(config, database_url, data_dir).create(
        name=name,
        team=team,
        models=models,
        rpm=rpm,
        tpm=tpm,
        max_tokens=max_tokens,
        max_prompt_tokens=max_prompt_tokens,
        injection=injection,
        pii=pii,
        expires=expires,
        admin=admin,
    )


@keys_app.command("list")
def keys_list(
    config: ConfigOption = None,
    database_url: DatabaseUrlOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """List keys (prefixes, rights, state); never a key or its hash."""
    _admin(config, database_url, data_dir).list_keys()


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[int, typer.Argument(help="The key's id (from `keys list`).")],
    config: ConfigOption = None,
    database_url: DatabaseUrlOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Stop a key; a running server refuses it within auth.key_cache_s."""
    _admin(config, database_url, data_dir).revoke(key_id)


@keys_app.command("rotate")
def keys_rotate(
    key_id: Annotated[int, typer.Argument(help="The key's id (from `keys list`).")],
    grace: Annotated[float, typer.Option(min=0, help="Seconds the old key keeps working.")] = 0.0,
    config: ConfigOption = None,
    database_url: DatabaseUrlOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Make a new key with the same rights and revoke the old one (after --grace s)."""
    _admin(config, database_url, data_dir).rotate(key_id, grace)


@teams_app.command("create")
def teams_create(
    name: Annotated[str, typer.Option(help="The team's name.")],
    models: ModelsOption = None,
    rpm: Annotated[int | None, typer.Option(min=1, help="Requests per minute, shared.")] = None,
    tpm: Annotated[int | None, typer.Option(min=1, help="Tokens per minute, shared.")] = None,
    config: ConfigOption = None,
    database_url: DatabaseUrlOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Make a team: its model list and limits apply to all its keys together."""
    _admin(config, database_url, data_dir).create_team(name, models, rpm, tpm)


@teams_app.command("list")
def teams_list(
    config: ConfigOption = None,
    database_url: DatabaseUrlOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """List teams."""
    _admin(config, database_url, data_dir).list_teams()


# -- audit (security) --
audit_app = typer.Typer(no_args_is_help=True, help="The tamper-evident audit log.")
app.add_typer(audit_app, name="audit")


@audit_app.command("verify")
def audit_verify(
    config: ConfigOption = None,
    database_url: DatabaseUrlOption = None,
    data_dir: DataDirOption = None,
    anchor: Annotated[
        Path | None,
        typer.Option(help="A head anchor saved by `shipway audit anchor`: catches a cut tail."),
    ] = None,
) -> None:
    """Check the audit log's HMAC chain: exit 0 if intact, 1 naming the first broken record."""
    import asyncio
    import os

    from shipway.errors import StoreUnavailable
    from shipway.security.audit_cli import read_anchor, verify_log

    settings = _store_settings(config, database_url, data_dir)
    try:
        seen = None if anchor is None else read_anchor(anchor)
        report = asyncio.run(verify_log(settings, os.environ, seen))
    except (ConfigError, StoreUnavailable) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2 if isinstance(exc, ConfigError) else 1) from None
    typer.echo(report.summary())
    raise typer.Exit(0 if report.ok else 1)


@audit_app.command("anchor")
def audit_anchor(
    config: ConfigOption = None,
    database_url: DatabaseUrlOption = None,
    data_dir: DataDirOption = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write it here too (else stdout only).")
    ] = None,
) -> None:
    """Print the head of the audit log, to keep elsewhere for `audit verify --anchor`."""
    import asyncio

    from shipway.errors import StoreUnavailable
    from shipway.security.audit_cli import anchor_document

    settings = _store_settings(config, database_url, data_dir)
    try:
        document = asyncio.run(anchor_document(settings))
        if output is not None:
            output.write_text(document, encoding="utf-8")
    except (ConfigError, StoreUnavailable, OSError) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    typer.echo(document, nl=False)


# -- costs (attribution) --
@app.command()
def costs(
    by: Annotated[str, typer.Option(help="Group by team, key, model, tag or user.")] = "team",
    since: Annotated[
        str, typer.Option(help="From 30m, 24h, 7d, 2w ago, or an ISO date (UTC unless it says).")
    ] = "7d",
    until: Annotated[str | None, typer.Option(help="Up to (same forms); default: now.")] = None,
    output_format: Annotated[
        str, typer.Option("--format", help="table, csv or json (as GET /admin/costs).")
    ] = "table",
    config: ConfigOption = None,
    database_url: DatabaseUrlOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Spend per team, key, model, tag or end user, from the server's database."""
    from shipway.costs.costs_cli import show_costs

    settings = _store_settings(config, database_url, data_dir)
    raise typer.Exit(show_costs(settings, by=by, since=since, until=until, fmt=output_format))


@app.command()
def stats(
    url: Annotated[
        str, typer.Option(envvar="SHIPWAY_URL", help="The server, e.g. http://127.0.0.1:8700.")
    ] = "http://127.0.0.1:8700",
    key: Annotated[
        str | None,
        typer.Option(envvar="SHIPWAY_API_KEY", help="An admin key (once the server has keys)."),
    ] = None,
    window: Annotated[int, typer.Option(min=10, help="Seconds of history to summarise.")] = 300,
    watch: Annotated[bool, typer.Option("--watch", help="Redraw in place until Ctrl-C.")] = False,
    interval: Annotated[float, typer.Option(min=0.5, help="Seconds between redraws.")] = 2.0,
) -> None:
    """A running server's traffic, latency, errors, cost, models and alerts (as /dashboard)."""
    from shipway.dashboard.stats_client import SummaryUnavailable
    from shipway.dashboard.stats_view import show_stats

    try:
        show_stats(Console(), url, key, window, watch=watch, interval_s=interval)
    except SummaryUnavailable as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


# -- alerts (telemetry) --
alerts_app = typer.Typer(no_args_is_help=True, help="Alert rules (evaluated by `serve`).")
app.add_typer(alerts_app, name="alerts")


@alerts_app.command("export")
def alerts_export(
    config: ConfigOption = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write it here instead of stdout.")
    ] = None,
) -> None:
    """Write the alert rules (defaults included) as a Prometheus alerting-rules file."""
    from shipway.telemetry.alert_export import export_yaml

    document = export_yaml(_load(config), str(config) if config else None)
    if output is None:
        typer.echo(document, nl=False)
        return
    try:
        output.write_text(document, encoding="utf-8")
    except OSError as exc:
        typer.echo(f"cannot write {output}: {exc}", err=True)
        raise typer.Exit(1) from None


# -- chaos (ops: fault injection and load, over HTTP only) --
chaos_app = typer.Typer(
    no_args_is_help=True, help="Fault injection: a faulty proxy and a load run."
)
app.add_typer(chaos_app, name="chaos")
AllowRemoteOption = Annotated[
    bool, typer.Option("--allow-remote", help="Allow a target that is not on this machine.")
]
Rate = Annotated[float, typer.Option(min=0.0, max=1.0)]


@chaos_app.command("proxy")
def chaos_proxy(
    target: Annotated[str, typer.Option(help="The upstream, e.g. http://127.0.0.1:9100.")],
    port: Annotated[int, typer.Option(min=0, max=65535, help="Listen port (0: any).")] = 8790,
    host: Annotated[str, typer.Option(help="Listen address.")] = "127.0.0.1",
    error_rate: Rate = 0.2,
    error_status: Annotated[int, typer.Option(min=400, max=599)] = 500,
    latency_ms: Annotated[float, typer.Option(min=0.0, help="Added to every request.")] = 0.0,
    latency_jitter_ms: Annotated[float, typer.Option(min=0.0, help="Plus 0..this.")] = 0.0,
    stall_rate: Rate = 0.05,
    stall_s: Annotated[float, typer.Option(min=0.0, help="Silence, then forwarded.")] = 10.0,
    reset_rate: Rate = 0.05,
    cut_rate: Rate = 0.02,
    seed: Annotated[int | None, typer.Option(help="Same seed, same faults in order.")] = None,
    report_s: Annotated[float, typer.Option(min=0.0, help="Print counts this often.")] = 10.0,
    allow_remote: AllowRemoteOption = False,
) -> None:
    """A proxy to --target that fails a share of requests: errors, stalls, resets, cuts.

    At most one fault per request, so the rates add up to 1 at most. GET /_chaos/stats counts
    them; POST /_chaos/config changes the rates while it runs."""
    import asyncio

    from pydantic import ValidationError

    from shipway.ops.chaos_faults import ChaosRates, explain
    from shipway.ops.chaos_proxy import ChaosProxy, serve_proxy
    from shipway.ops.loopback import TargetRefused, check_target

    try:
        url = check_target(target, allow_remote=allow_remote)
        rates = ChaosRates(
            error_rate=error_rate,
            error_status=error_status,
            latency_ms=latency_ms,
            latency_jitter_ms=latency_jitter_ms,
            stall_rate=stall_rate,
            stall_s=stall_s,
            reset_rate=reset_rate,
            cut_rate=cut_rate,
        )
    except TargetRefused as exc:
        typer.echo(f"chaos proxy: {exc}", err=True)
        raise typer.Exit(2) from None
    except ValidationError as exc:
        typer.echo(f"chaos proxy: {explain(exc)}", err=True)
        raise typer.Exit(2) from None
    try:
        asyncio.run(serve_proxy(ChaosProxy(url, rates, seed), host, port, report_s))
    except OSError as exc:
        typer.echo(f"chaos proxy: cannot listen on {host}:{port}: {exc}", err=True)
        raise typer.Exit(1) from None


@chaos_app.command("run")
def chaos_run(
    model: Annotated[str, typer.Option(help="The model (alias) to ask.")],
    url: Annotated[str, typer.Option(envvar="SHIPWAY_URL", help="The server.")] = (
        "http://127.0.0.1:8700"
    ),
    requests: Annotated[int, typer.Option(min=1, help="Requests in all.")] = 2000,
    concurrency: Annotated[int, typer.Option(min=1, help="In flight at once.")] = 32,
    stream_share: Annotated[float, typer.Option(min=0.0, max=1.0, help="Share streamed.")] = 0.0,
    max_tokens: Annotated[int, typer.Option(min=1)] = 8,
    api_key_env: Annotated[
        str | None, typer.Option(help="The environment variable holding the API key.")
    ] = None,
    timeout_s: Annotated[float, typer.Option(min=0.1, help="Per request.")] = 60.0,
    duration_limit_s: Annotated[
        float, typer.Option(min=0.1, help="No new request after this long.")
    ] = 600.0,
    allow_remote: AllowRemoteOption = False,
    output_format: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
) -> None:
    """Bounded load at a running server, and what it did with it.

    Prints the success rate, error mix, latency, who answered, and (from /metrics) retries,
    fallbacks and breaker transitions. Exit 0 once it ran, whatever the results."""
    from shipway.ops.chaos_run import RunPlan, run_chaos

    if output_format not in ("table", "json"):
        typer.echo("chaos run: --format is table or json", err=True)
        raise typer.Exit(2)
    plan = RunPlan(
        url=url,
        model=model,
        requests=requests,
        concurrency=concurrency,
        stream_share=stream_share,
        max_tokens=max_tokens,
        timeout_s=timeout_s,
        duration_limit_s=duration_limit_s,
    )
    code = run_chaos(plan, allow_remote=allow_remote, api_key_env=api_key_env, fmt=output_format)
    raise typer.Exit(code)


def main() -> None:
    app()
