"""What the Redis-backed stores share: Lua scripts run by their SHA, and one error mapping.

``EVALSHA`` is called directly rather than through redis-py's ``Script`` wrapper, which
copies the keys and arguments into new tuples and runs an import per call; a Redis that
does not hold the script yet (a restart, a new server) gets it loaded once, then run.
A connection error or timeout becomes ``StoreUnavailable`` naming what needed Redis.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shipway.errors import StoreUnavailable

__all__ = ["LuaScript", "redis_call", "unavailable"]

_T = TypeVar("_T")
_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)


class LuaScript:
    __slots__ = ("_what", "sha", "text")

    def __init__(self, text: str, what: str = "") -> None:
        """``what``: for whom Redis was needed, in the error (e.g. "the response cache")."""
        self.text = text
        self.sha = hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()
        self._what = what

    async def run(self, client: aioredis.Redis, numkeys: int, *keys_and_args: Any) -> Any:
        """``EVALSHA``, loading the script first if this Redis does not hold it."""
        try:
            try:
                return await client.evalsha(self.sha, numkeys, *keys_and_args)
            except NoScriptError:
                await client.script_load(self.text)
                return await client.evalsha(self.sha, numkeys, *keys_and_args)
        except _UNREACHABLE as exc:
            raise unavailable(exc, self._what) from exc


async def redis_call(awaitable: Awaitable[_T], what: str = "") -> _T:
    """Await one Redis command; an unreachable Redis is ``StoreUnavailable``."""
    try:
        return await awaitable
    except _UNREACHABLE as exc:
        raise unavailable(exc, what) from exc


def unavailable(exc: Exception, what: str = "") -> StoreUnavailable:
    needed = f" for {what}" if what else ""
    return StoreUnavailable(
        f"Redis is unreachable{needed} ({exc}); check `redis_url` and that Redis is running"
    )
