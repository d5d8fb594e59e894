"""Server secrets (the key-hash pepper, the audit HMAC key): from the environment, or made once.

A secret comes from its environment variable when set. Otherwise, on the default SQLite store,
Shipway generates one the first time and keeps it in ``data_dir`` (mode 0600) beside the
database, with a warning: ``make serve`` works with no setup, and every process started on the
same data directory (the server, ``shipway keys create``) agrees on it. With PostgreSQL
(replicas on several machines) there is no shared directory, so the variable is required.
"""

from __future__ import annotations

import base64
import os
import secrets
import time
from collections.abc import Mapping
from pathlib import Path

import structlog

from shipway.config import ShipwaySettings
from shipway.errors import ConfigError

__all__ = ["resolve_secret"]

_MIN_BYTES = 16


def resolve_secret(
    settings: ShipwaySettings, env_name: str, file_name: str, environ: Mapping[str, str]
) -> bytes:
    """The secret in ``environ[env_name]``, else the one kept in ``data_dir/file_name``."""
    value = environ.get(env_name)
    if value:
        secret = value.encode()
        if len(secret) < _MIN_BYTES:
            raise ConfigError(f"{env_name} must hold at least {_MIN_BYTES} characters")
        return secret
    if settings.database_url and not settings.database_url.startswith("sqlite"):
        raise ConfigError(
            f"{env_name} is not set: with a shared database (database_url) every replica "
            f"needs the same secret from the environment; generate one with "
            f"`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        )
    return _kept_secret(settings.data_dir / file_name, env_name)


def _kept_secret(path: Path, env_name: str) -> bytes:
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=")
    try:
        # O_EXCL: two processes starting together keep one secret, the second reads it.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _written_by_other(path)
    with os.fdopen(fd, "wb") as out:
        out.write(secret)
    structlog.get_logger("shipway.secrets").warning(
        "generated a secret and kept it in the data directory; set it in the environment to "
        "keep it apart from the data",
        path=str(path),
        env=env_name,
    )
    return secret


def _written_by_other(path: Path) -> bytes:
    # The other process created the file an instant ago and may not have written it yet.
    for _ in range(100):
        secret = path.read_bytes().strip()
        if secret:
            return secret
        time.sleep(0.01)
    raise ConfigError(f"{path} is empty; delete it and start again")
