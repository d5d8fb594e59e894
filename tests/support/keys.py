"""API keys for the security tests: the `shipway` admin CLI on a running server's store, and
waiting for a decision to change (a key made or revoked applies within auth.key_cache_s)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from typing import NamedTuple

from tests.support.servers import Server

__all__ = ["MadeKey", "bearer", "create_key", "shipway_cli", "wait_until"]


def shipway_cli(
    server: Server, *args: str, env: Mapping[str, str] | None = None, timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    """``python -m shipway ARGS`` on ``server``'s store (its data directory; ``env`` adds what
    else the server was started with: a pepper, a database URL)."""
    assert server.data_dir is not None, "only servers made by shipway_server() have a data dir"
    return subprocess.run(
        [sys.executable, "-m", "shipway", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, "SHIPWAY_DATA_DIR": str(server.data_dir), **(env or {})},
    )


class MadeKey(NamedTuple):
    key: str
    id: int


def create_key(
    server: Server, name: str, *flags: str, env: Mapping[str, str] | None = None
) -> MadeKey:
    """``shipway keys create --name NAME FLAGS``: the key it printed on stdout, and its id."""
    result = shipway_cli(server, "keys", "create", "--name", name, *flags, env=env)
    assert result.returncode == 0, result.stderr
    key = result.stdout.strip()
    assert key.startswith("sw-") and "\n" not in key, result.stdout
    made = re.search(r"^key (\d+) \(", result.stderr, re.MULTILINE)
    assert made is not None, result.stderr
    return MadeKey(key, int(made.group(1)))


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def wait_until(predicate: Callable[[], bool], limit_s: float, interval_s: float = 0.05) -> float:
    """Seconds until ``predicate()`` held (polled every ``interval_s``); fails past ``limit_s``."""
    started = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - started
        if time.monotonic() - started > limit_s:
            raise AssertionError(f"not true within {limit_s} s")
        time.sleep(interval_s)
