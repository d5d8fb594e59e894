"""A key's prompt cap (`max_prompt_tokens`): stored, carried by its principal, never widened.

Runs on a real SQLite file (the default store).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shipway.config import load_settings
from shipway.errors import PermissionDenied
from shipway.security.key_format import KeyHasher
from shipway.security.key_service import KeyService, KeySpec, key_view
from shipway.store import Database


@pytest.fixture
async def keys(tmp_path: Path) -> AsyncIterator[KeyService]:
    database = Database.from_settings(load_settings(overrides={"data_dir": tmp_path}))
    await database.start()
    yield KeyService(database, KeyHasher(b"p" * 32), cache_s=1.0)
    await database.stop()


async def test_the_cap_is_stored_shown_and_on_the_principal(keys: KeyService) -> None:
    secret, record = await keys.create(KeySpec(name="app", max_prompt_tokens=512), actor=None)
    assert record.max_prompt_tokens == 512
    assert key_view(record)["max_prompt_tokens"] == 512
    assert (await keys.authenticate(f"Bearer {secret}")).max_prompt_tokens == 512
    open_secret, _ = await keys.create(KeySpec(name="open"), actor=None)
    assert (await keys.authenticate(f"Bearer {open_secret}")).max_prompt_tokens is None


async def test_a_key_made_by_a_capped_admin_inherits_the_cap_and_cannot_raise_it(
    keys: KeyService,
) -> None:
    secret, _ = await keys.create(
        KeySpec(name="lead", admin=True, max_prompt_tokens=1000), actor=None
    )
    lead = await keys.authenticate(f"Bearer {secret}")
    _, inherited = await keys.create(KeySpec(name="svc"), actor=lead)
    assert inherited.max_prompt_tokens == 1000
    _, lower = await keys.create(KeySpec(name="svc2", max_prompt_tokens=10), actor=lead)
    assert lower.max_prompt_tokens == 10
    with pytest.raises(PermissionDenied, match="max_prompt_tokens must be at most 1000"):
        await keys.create(KeySpec(name="svc3", max_prompt_tokens=1001), actor=lead)


async def test_rotation_keeps_the_cap(keys: KeyService) -> None:
    _, old = await keys.create(KeySpec(name="app", max_prompt_tokens=64), actor=None)
    _, new, _ = await keys.rotate(old.id, actor=None)
    assert new.max_prompt_tokens == 64
