"""``shipway audit verify`` and ``shipway audit anchor``: the work behind the commands.

Both read the database the settings name (the SQLite file in ``data_dir``, or
``database_url``) without migrating it, so they are safe to run beside a live server.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from shipway.config import ShipwaySettings
from shipway.errors import ConfigError, StoreUnavailable
from shipway.security.audit import chain_key
from shipway.store import audit as chain
from shipway.store.database import Database
from shipway.store.urls import sqlite_path

__all__ = ["anchor_document", "read_anchor", "verify_log"]


async def verify_log(
    settings: ShipwaySettings, environ: Mapping[str, str], anchor: chain.ChainHead | None
) -> chain.VerifyReport:
    key = chain_key(settings, environ, create=False)
    database = await _open(settings)
    try:
        async with database.transaction() as session:
            return await chain.verify(session, key, anchor)
    finally:
        await database.stop()


async def anchor_document(settings: ShipwaySettings) -> str:
    """The head of the chain as a JSON document, to keep somewhere the database is not."""
    database = await _open(settings)
    try:
        async with database.transaction() as session:
            head = await chain.head(session)
    finally:
        await database.stop()
    anchor = head or chain.ChainHead(0, chain.GENESIS, None)
    return json.dumps(anchor.to_json(), indent=2) + "\n"


def read_anchor(path: Path) -> chain.ChainHead:
    try:
        return chain.ChainHead.from_json(json.loads(path.read_text(encoding="utf-8")))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the anchor: {exc}") from exc
    except ValueError as exc:  # json.JSONDecodeError included
        raise ConfigError(f"{path}: not an audit anchor: {exc}") from exc


async def _open(settings: ShipwaySettings) -> Database:
    database = Database.from_settings(settings)
    path = sqlite_path(database.url)
    if path is not None and not path.exists():
        raise StoreUnavailable(f"no database at {path}; pass --data-dir or --database-url")
    await database.start(migrate_schema=False)
    if await database.revision() is None:
        await database.stop()
        raise StoreUnavailable(
            f"{database.display_url} has no Shipway schema; run `shipway db upgrade` first"
        )
    return database
