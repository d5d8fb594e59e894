"""API keys: their format, the keyed hash, the cache and the no-escalation rules.

Runs on a real SQLite file (the default store); the same store functions run on PostgreSQL
in tests/integration.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from shipway.config import load_settings
from shipway.errors import NotFound, PermissionDenied, Unauthorized
from shipway.security.key_format import KeyHasher, display_prefix, generate_key, well_formed
from shipway.security.key_service import KeyService, KeySpec
from shipway.store import Database


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    db = Database.from_settings(load_settings(overrides={"data_dir": tmp_path}))
    await db.start()
    yield db
    await db.stop()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def keys(database: Database, clock: Clock) -> KeyService:
    return KeyService(database, KeyHasher(b"p" * 32), cache_s=1.0, clock=clock)


def test_generated_keys_are_well_formed_and_distinct() -> None:
    made = {generate_key() for _ in range(200)}
    assert len(made) == 200
    for key in made:
        assert well_formed(key) and key.startswith("sw-") and len(key) == 52
        assert display_prefix(key) == key[:11]


@pytest.mark.parametrize(
    "mangle",
    [
        lambda k: k[:-1] + ("A" if k[-1] != "A" else "B"),  # checksum wrong
        lambda k: k[:10] + ("x" if k[10] != "x" else "y") + k[11:],  # body changed
        lambda k: k[:-1],
        lambda k: "sk-" + k[3:],
        lambda k: k[:20] + "é" + k[21:],
        lambda k: k.replace(k[5], "'", 1),
    ],
)
def test_malformed_keys_fail_the_checksum(mangle: object) -> None:
    key = generate_key()
    assert callable(mangle)
    assert not well_formed(mangle(key))


def test_the_hash_depends_on_the_pepper() -> None:
    key = generate_key()
    assert KeyHasher(b"a" * 32).hash(key) != KeyHasher(b"b" * 32).hash(key)
    assert KeyHasher(b"a" * 32).hash(key) == KeyHasher(b"a" * 32).hash(key)


async def test_a_key_authenticates_until_revoked_then_within_the_cache_time(
    keys: KeyService, clock: Clock
) -> None:
    secret, record = await keys.create(KeySpec(name="svc", models=("m",)), actor=None)
    principal = await keys.authenticate(f"Bearer {secret}")
    assert principal.key_id == record.id and principal.models == frozenset({"m"})
    # Revoked from another process (no local cache drop): refused once the cache expires.
    other = KeyService(keys._db, KeyHasher(b"p" * 32), cache_s=1.0)
    await other.revoke(record.id, actor=None)
    assert (await keys.authenticate(f"Bearer {secret}")).key_id == record.id  # cached
    clock.now += 1.01
    with pytest.raises(Unauthorized):
        await keys.authenticate(f"Bearer {secret}")


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Basic abc",
        "Bearer ' OR 1=1 --",
        "Bearer " + "A" * 10_000,
        "Bearer sw-ünïcödé",
        "bearer sw-" + "0" * 49,
    ],
)
async def test_bad_authorization_values_are_401(keys: KeyService, header: str | None) -> None:
    await keys.create(KeySpec(name="exists"), actor=None)
    with pytest.raises(Unauthorized):
        await keys.authenticate(header)


async def test_expired_key_is_refused(keys: KeyService) -> None:
    past = datetime.now(UTC) + timedelta(milliseconds=50)
    secret, _ = await keys.create(KeySpec(name="short", expires_at=past), actor=None)
    await asyncio.sleep(0.06)
    with pytest.raises(Unauthorized):
        await keys.authenticate(f"Bearer {secret}")


async def test_a_new_key_works_at_once_and_keys_exist_flips(keys: KeyService) -> None:
    assert not await keys.keys_exist()
    other = KeyService(keys._db, KeyHasher(b"p" * 32), cache_s=1.0)
    secret, _ = await other.create(KeySpec(name="late"), actor=None)
    # A miss is cached too; a key made elsewhere was never looked up here, so it works now.
    assert (await keys.authenticate(f"Bearer {secret}")).name == "late"


async def test_concurrent_misses_share_one_read(keys: KeyService) -> None:
    secret, _ = await keys.create(KeySpec(name="hot"), actor=None)
    reads = 0
    original = keys._read

    async def counting(digest: str) -> object:
        nonlocal reads
        reads += 1
        await asyncio.sleep(0.01)
        return await original(digest)

    keys._read = counting  # type: ignore[method-assign,assignment]
    results = await asyncio.gather(*(keys.authenticate(f"Bearer {secret}") for _ in range(50)))
    assert reads == 1 and {p.name for p in results} == {"hot"}


async def _admin(keys: KeyService, **spec: object) -> object:
    secret, _ = await keys.create(KeySpec(name="admin", admin=True, **spec), actor=None)  # type: ignore[arg-type]
    return await keys.authenticate(f"Bearer {secret}")


async def test_a_user_key_cannot_make_keys(keys: KeyService) -> None:
    secret, _ = await keys.create(KeySpec(name="user"), actor=None)
    user = await keys.authenticate(f"Bearer {secret}")
    with pytest.raises(PermissionDenied):
        await keys.create(KeySpec(name="mine"), actor=user)


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ({"models": ("a", "b", "c")}, "models"),
        ({"rpm": 101}, "rpm"),
        ({"tpm": 10_001}, "tpm"),
        ({"team": "other"}, "team"),
        ({"guards": {"injection": "off"}}, "guards.injection"),
        ({"expires_at": datetime.now(UTC) + timedelta(days=400)}, "expires"),
    ],
)
async def test_an_admin_key_cannot_make_a_key_with_more_rights(
    keys: KeyService, spec: dict[str, object], named: str
) -> None:
    admin = await _admin(
        keys,
        team="t1",
        models=("a", "b"),
        rpm=100,
        tpm=10_000,
        guards={"injection": "flag"},
        expires_at=datetime.now(UTC) + timedelta(days=30),
    )
    with pytest.raises(PermissionDenied, match=named):
        await keys.create(KeySpec(name="more", **spec), actor=admin)  # type: ignore[arg-type]


async def test_an_admin_key_makes_keys_inside_its_own_rights(keys: KeyService) -> None:
    admin = await _admin(keys, team="t1", models=("a", "b"), rpm=100)
    _, made = await keys.create(KeySpec(name="less", models=("a",), rpm=10), actor=admin)
    assert made.models == ("a",) and made.rpm == 10 and made.team_id is not None
    _, inherited = await keys.create(KeySpec(name="same"), actor=admin)
    assert inherited.models == ("a", "b") and inherited.rpm == 100


async def test_a_team_admin_cannot_touch_another_teams_keys(keys: KeyService) -> None:
    _, theirs = await keys.create(KeySpec(name="theirs", team="t2"), actor=None)
    admin = await _admin(keys, team="t1")
    with pytest.raises(NotFound):
        await keys.revoke(theirs.id, actor=admin)  # type: ignore[arg-type]
    with pytest.raises(NotFound):
        await keys.rotate(theirs.id, actor=admin)  # type: ignore[arg-type]
    assert [k.name for k in await keys.list(actor=admin)] == ["admin"]  # type: ignore[arg-type]


async def test_rotation_keeps_rights_and_retires_the_old_key_after_grace(
    keys: KeyService, clock: Clock
) -> None:
    old_secret, old = await keys.create(KeySpec(name="svc", models=("m",), rpm=5), actor=None)
    new_secret, new, retired = await keys.rotate(old.id, actor=None, grace_s=0)
    assert (new.models, new.rpm, new.name) == (("m",), 5, "svc")
    assert retired.revoked_at is not None
    assert (await keys.authenticate(f"Bearer {new_secret}")).key_id == new.id
    with pytest.raises(Unauthorized):  # revoked here: dropped from this cache at once
        await keys.authenticate(f"Bearer {old_secret}")
