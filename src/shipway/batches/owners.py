"""Who a batch runs as, and who holds its lines.

A batch runs as the key that created it, read again from the store (at most every
``auth.key_cache_s``), so a key revoked or expired since stops its batches. The anonymous
principal runs what was made on an open server, until a key is made: then those stop too.

A runner names itself ``host/pid/random`` when it leases lines. A runner starting on a host
releases the leases of runners on that host whose process is gone (a crash, a SIGKILL), so
their lines run again at once instead of when the leases run out.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from shipway.security.principal import ANONYMOUS, Principal
from shipway.store import Database
from shipway.store.keys import get_key
from shipway.store.teams import get_team_by_id

__all__ = ["PrincipalCache", "is_dead_here", "runner_name"]


def runner_name() -> str:
    return f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(4)}"


def is_dead_here(owner: str) -> bool:
    """A lease holder on this host whose process has gone (or that was this very process id
    before a restart: nothing here has leased anything yet)."""
    host, _, rest = owner.partition("/")
    pid_text = rest.partition("/")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, another user's
    return False


class PrincipalCache:
    def __init__(
        self,
        database: Database,
        ttl_s: float,
        keys_exist: Callable[[], Awaitable[bool]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._database = database
        self._keys_exist = keys_exist
        self._ttl_s = ttl_s
        self._clock = clock
        self._cache: dict[int, tuple[float, Principal | None]] = {}

    async def get(self, key_id: int | None) -> Principal | None:
        """The key's principal; None if it was revoked or has expired (or, for the anonymous
        caller, if the server is no longer open)."""
        if key_id is None:
            return None if await self._keys_exist() else ANONYMOUS
        cached = self._cache.get(key_id)
        now = self._clock()
        if cached is not None and now - cached[0] < self._ttl_s:
            return cached[1]
        async with self._database.transaction() as session:
            key = await get_key(session, key_id)
            principal = None
            if key is not None and key.usable(datetime.now(UTC)):
                team = None if key.team_id is None else await get_team_by_id(session, key.team_id)
                principal = Principal.from_key(key, team)
        self._cache[key_id] = (now, principal)
        return principal
