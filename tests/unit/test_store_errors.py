"""Which counter the settings build, and a Redis that is down named as such, not a traceback."""

from __future__ import annotations

import pytest

from shipway.config import load_settings
from shipway.errors import StoreUnavailable
from shipway.store import MemoryCounter, RedisCounter, build_counter


def test_the_settings_choose_the_counter(monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(build_counter(load_settings()), MemoryCounter)
    monkeypatch.setenv("SHIPWAY_REDIS_URL", "redis://127.0.0.1:1/0")
    assert isinstance(build_counter(load_settings()), RedisCounter)


async def test_an_unreachable_redis_is_a_store_error() -> None:
    counter = RedisCounter.from_url("redis://:hunter2@127.0.0.1:1/0")
    with pytest.raises(StoreUnavailable, match="redis_url") as caught:
        await counter.start()
    with pytest.raises(StoreUnavailable):
        await counter.hit("k", 1, 10, 60)
    assert caught.value.status == 503 and "hunter2" not in str(caught.value)
    await counter.close()
