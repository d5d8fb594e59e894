"""API keys at run time: who a presented key is, and who may make or change keys.

``authenticate`` turns an ``Authorization`` value into a ``Principal``. A well-formed key is
looked up by its keyed hash and the answer (found or not) is cached for
``auth.key_cache_s``: a revocation or a new key made by ``shipway keys create`` in another
process applies within that time, and a hot key costs one database read per period, not
one per request. Concurrent misses for one key share one read.

``create``, ``revoke``, ``rotate`` and ``list`` serve the CLI (``actor=None``: whoever can
run the CLI on the data owns the server) and ``/admin/keys`` (``actor`` = the calling admin
key). A key made by another key never has more rights than its maker: the maker's team,
a subset of its models, limits no looser, an expiry no later, guard overrides no weaker.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from shipway.config import ShipwaySettings
from shipway.errors import InvalidRequest, NotFound, PermissionDenied, Unauthorized
from shipway.security.key_format import KeyHasher, display_prefix, generate_key, well_formed
from shipway.security.principal import Principal
from shipway.security.secrets import resolve_secret
from shipway.store import Database
from shipway.store.keys import (
    KeyRecord,
    create_key,
    get_key,
    get_key_by_hash,
    has_keys,
    list_keys,
    revoke_key,
)
from shipway.store.teams import TeamRecord, create_team, get_team, get_team_by_id

__all__ = [
    "KEY_PEPPER_ENV",
    "KeyService",
    "KeySpec",
    "build_key_service",
    "key_view",
    "parse_models",
]

# Unknown keys are cached too (a client retrying a bad key must not cost a read each time),
# but an attacker can send endless distinct well-formed keys: the cache is bounded.
_MAX_CACHED = 50_000
_BEARER = "bearer "
# Guard overrides, weakest first: a made key may not weaken its maker's.
_STRICTNESS = {"injection": ("off", "flag", "block"), "pii": ("off", "redact", "block")}


@dataclass(frozen=True, slots=True)
class KeySpec:
    """What a new key may do; None fields inherit (from the maker, for keys made by keys)."""

    name: str
    team: str | None = None
    models: tuple[str, ...] | None = None
    rpm: int | None = None
    tpm: int | None = None
    max_tokens: int | None = None
    max_prompt_tokens: int | None = None
    guards: dict[str, str] | None = None
    expires_at: datetime | None = None
    admin: bool = False


class KeyService:
    def __init__(
        self,
        database: Database,
        hasher: KeyHasher,
        *,
        cache_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._db = database
        self._hasher = hasher
        self._cache_s = cache_s
        self._clock = clock
        self._cache: dict[str, tuple[float, Principal | None]] = {}
        self._digests: dict[str, str] = {}
        self._pending: dict[str, asyncio.Future[Principal | None]] = {}
        self._keys_exist = False
        self._keys_checked_at = -float("inf")
        self._keys_check: asyncio.Future[None] | None = None

    # -- the hot path -------------------------------------------------------------------------
    async def keys_exist(self) -> bool:
        """Whether any key was ever made (then every protected route needs one).

        Once true it stays true: keys are revoked, never deleted. Requests arriving while a
        check is in flight wait for it: none may be let in on the answer of the check before.
        """
        if self._keys_exist:
            return True
        if self._clock() - self._keys_checked_at >= self._cache_s:
            if self._keys_check is None:
                self._keys_check = asyncio.ensure_future(self._check_keys())
            await asyncio.shield(self._keys_check)
        return self._keys_exist

    async def _check_keys(self) -> None:
        try:
            async with self._db.transaction() as session:
                self._keys_exist = await has_keys(session)
            self._keys_checked_at = self._clock()
        finally:
            self._keys_check = None

    async def authenticate(self, authorization: str | None) -> Principal:
        """The principal of an ``Authorization: Bearer sw-…`` value; ``Unauthorized`` if none.

        The message never says whether a key exists, was revoked or expired.
        """
        digest = self._digests.get(authorization) if authorization else None
        if digest is None:
            digest = self._digest(authorization)
        principal = await self._lookup(digest)
        if principal is None:
            raise _invalid()
        if principal.expires_at is not None and principal.expires_at <= datetime.now(UTC):
            raise _invalid()
        return principal

    def _digest(self, authorization: str | None) -> str:
        key = _bearer(authorization)
        if key is None:
            raise Unauthorized(
                "You didn't provide an API key. Send it as `Authorization: Bearer sw-...`; "
                "an admin makes one with `shipway keys create`."
            )
        if not well_formed(key):
            raise _invalid()
        digest = self._hasher.hash(key)
        # The checksum and the keyed hash are 6 µs of every request; a header seen before
        # maps straight to its digest (whether the key is still good is the cache's job).
        if len(self._digests) >= _MAX_CACHED:
            self._digests.clear()
        assert authorization is not None
        self._digests[authorization] = digest
        return digest

    async def _lookup(self, digest: str) -> Principal | None:
        cached = self._cache.get(digest)
        now = self._clock()
        if cached is not None and now - cached[0] < self._cache_s:
            return cached[1]
        pending = self._pending.get(digest)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Principal | None] = asyncio.get_running_loop().create_future()
        self._pending[digest] = future
        try:
            principal = await self._read(digest)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning if nobody waits
            raise
        finally:
            del self._pending[digest]
        future.set_result(principal)
        if len(self._cache) >= _MAX_CACHED:
            self._cache.clear()
        self._cache[digest] = (now, principal)
        return principal

    async def _read(self, digest: str) -> Principal | None:
        async with self._db.transaction() as session:
            key = await get_key_by_hash(session, digest)
            if key is None or not key.usable(datetime.now(UTC)):
                return None
            team = None if key.team_id is None else await get_team_by_id(session, key.team_id)
        return Principal.from_key(key, team)

    def forget(self, key: KeyRecord) -> None:
        """Drop a key from this process's cache at once (revoked here)."""
        self._cache.pop(key.key_hash, None)

    # -- administration ---------------------------------------------------------------------
    async def create(self, spec: KeySpec, *, actor: Principal | None) -> tuple[str, KeyRecord]:
        """Make a key; returns the key itself (shown once, never stored) and its record."""
        if actor is not None:
            spec = _bounded_by(spec, actor)
        secret = generate_key()
        async with self._db.transaction() as session:
            # The CLI and a key of no team may name a new team; a team's admin only its own.
            creates = actor is None or actor.team_id is None
            team = await self._team(session, spec.team, create=creates)
            record = await create_key(
                session,
                name=spec.name,
                key_hash=self._hasher.hash(secret),
                prefix=display_prefix(secret),
                team_id=None if team is None else team.id,
                models=spec.models,
                rpm=spec.rpm,
                tpm=spec.tpm,
                max_tokens=spec.max_tokens,
                max_prompt_tokens=spec.max_prompt_tokens,
                guards=spec.guards,
                admin=spec.admin,
                created_by=None if actor is None else actor.key_id,
                expires_at=spec.expires_at,
            )
        self._keys_exist = True
        return secret, record

    async def list(self, *, actor: Principal | None) -> list[KeyRecord]:
        async with self._db.transaction() as session:
            team_id = None if actor is None else actor.team_id
            return await list_keys(session, team_id=team_id)

    async def revoke(
        self, key_id: int, *, actor: Principal | None, grace_s: float = 0.0
    ) -> KeyRecord:
        """Revoke now, or after ``grace_s`` (a rotation's overlap)."""
        at = datetime.now(UTC) + timedelta(seconds=grace_s)
        async with self._db.transaction() as session:
            target = await self._managed(session, key_id, actor)
            record = await revoke_key(session, target.id, at=at)
        assert record is not None  # locked and found above
        self.forget(record)
        return record

    async def rotate(
        self, key_id: int, *, actor: Principal | None, grace_s: float = 0.0
    ) -> tuple[str, KeyRecord, KeyRecord]:
        """A new key with the old one's rights; the old one stops after ``grace_s``."""
        async with self._db.transaction() as session:
            old = await self._managed(session, key_id, actor)
            if old.revoked_at is not None and old.revoked_at <= datetime.now(UTC):
                raise InvalidRequest(f"key {key_id} is revoked; make a new key instead")
            team = None if old.team_id is None else await get_team_by_id(session, old.team_id)
        spec = _spec_of(old, None if team is None else team.name)
        if actor is not None:
            _check_within(spec, actor)
        secret, new = await self.create(spec, actor=actor)
        revoked = await self.revoke(key_id, actor=actor, grace_s=grace_s)
        return secret, new, revoked

    async def _managed(
        self, session: AsyncSession, key_id: int, actor: Principal | None
    ) -> KeyRecord:
        target = await get_key(session, key_id)
        # Another team's key is reported missing, not forbidden: its id says nothing.
        if target is None or (
            actor is not None and actor.team_id is not None and target.team_id != actor.team_id
        ):
            raise NotFound(f"no key with id {key_id}")
        if actor is not None:
            _require_admin(actor)
            # Revoking or rotating a key is power over it: only over keys no broader than
            # the actor's own (a narrow admin cannot switch off a broader one). Guards are
            # left to rotate, which copies them into a new key.
            team = actor.team if target.team_id is not None else None
            _check_within(dataclasses.replace(_spec_of(target, team), guards=None), actor)
        return target

    async def _team(
        self, session: AsyncSession, name: str | None, *, create: bool
    ) -> TeamRecord | None:
        if name is None:
            return None
        team = await get_team(session, name)
        if team is None:
            if not create:
                raise NotFound(f"no team named {name!r}; create it with `shipway teams create`")
            team = await create_team(session, name)
        return team


def _spec_of(key: KeyRecord, team: str | None) -> KeySpec:
    return KeySpec(
        name=key.name,
        team=team,
        models=key.models,
        rpm=key.rpm,
        tpm=key.tpm,
        max_tokens=key.max_tokens,
        max_prompt_tokens=key.max_prompt_tokens,
        guards=key.guards,
        expires_at=key.expires_at,
        admin=key.admin,
    )


def _bearer(authorization: str | None) -> str | None:
    """The key in a Bearer value (None: no value at all; anything else is checked later)."""
    if not authorization:
        return None
    if authorization[: len(_BEARER)].lower() != _BEARER:
        return ""  # some other scheme: a malformed key, not a missing one
    return authorization[len(_BEARER) :].strip()


def _invalid() -> Unauthorized:
    return Unauthorized("Incorrect API key provided. Check the key, or ask an admin for one.")


def _require_admin(actor: Principal) -> None:
    if not actor.admin:
        raise PermissionDenied("only an admin key may manage keys")


def _bounded_by(spec: KeySpec, actor: Principal) -> KeySpec:
    """The spec with the maker's limits filled in where it set none, then checked."""
    _require_admin(actor)
    filled = KeySpec(
        name=spec.name,
        team=spec.team if spec.team is not None else actor.team,
        models=spec.models
        if spec.models is not None
        else (None if actor.models is None else tuple(sorted(actor.models))),
        rpm=spec.rpm if spec.rpm is not None else actor.rpm,
        tpm=spec.tpm if spec.tpm is not None else actor.tpm,
        max_tokens=spec.max_tokens if spec.max_tokens is not None else actor.max_tokens,
        max_prompt_tokens=spec.max_prompt_tokens
        if spec.max_prompt_tokens is not None
        else actor.max_prompt_tokens,
        guards=_inherited_guards(spec.guards, actor),
        expires_at=spec.expires_at if spec.expires_at is not None else actor.expires_at,
        admin=spec.admin,
    )
    _check_within(filled, actor)
    return filled


def _inherited_guards(wanted: dict[str, str] | None, actor: Principal) -> dict[str, str] | None:
    """The maker's own guard overrides, where the new key sets none of its own."""
    guards = dict(wanted or {})
    if actor.injection_policy is not None:
        guards.setdefault("injection", actor.injection_policy)
    if actor.pii_policy is not None:
        guards.setdefault("pii", actor.pii_policy)
    return guards or None


def _check_within(spec: KeySpec, actor: Principal) -> None:
    """Refuse a key with any right its maker lacks (403, naming the right)."""
    _require_admin(actor)
    problems: list[str] = []
    if actor.team_id is not None and spec.team != actor.team:
        problems.append(f"team must be {actor.team!r}")
    if actor.models is not None and (spec.models is None or not set(spec.models) <= actor.models):
        problems.append(f"models must be among {sorted(actor.models)}")
    for field in ("rpm", "tpm", "max_tokens", "max_prompt_tokens"):
        mine, theirs = getattr(actor, field), getattr(spec, field)
        if mine is not None and (theirs is None or theirs > mine):
            problems.append(f"{field} must be at most {mine}")
    if actor.expires_at is not None and (
        spec.expires_at is None or spec.expires_at > actor.expires_at
    ):
        problems.append(f"expires must be no later than {actor.expires_at.isoformat()}")
    for guard, ranks in _STRICTNESS.items():
        wanted = (spec.guards or {}).get(guard)
        own = actor.injection_policy if guard == "injection" else actor.pii_policy
        # With no override of its own, the maker is under each model's policy, which may be
        # anything up to block: an override below block could be weaker than that.
        floor = ranks.index(own) if own in ranks else len(ranks) - 1
        if wanted is not None and wanted in ranks and ranks.index(wanted) < floor:
            problems.append(f"guards.{guard} may not be weaker than {ranks[floor]!r}")
    if problems:
        raise PermissionDenied(
            "a key cannot make or rotate a key with more rights than its own: "
            + "; ".join(problems)
        )


def parse_models(value: str | Sequence[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    models = tuple(sorted({item.strip() for item in items if item.strip()}))
    if not models:
        raise InvalidRequest("models must name at least one model", param="models")
    return models


KEY_PEPPER_ENV = "SHIPWAY_KEY_PEPPER"


def build_key_service(
    settings: ShipwaySettings, database: Database, environ: Mapping[str, str]
) -> KeyService:
    """The service every process on these settings builds alike (server and CLI agree on
    the pepper: the environment's, or the one kept in ``data_dir``)."""
    pepper = resolve_secret(settings, KEY_PEPPER_ENV, "key-pepper.secret", environ)
    return KeyService(database, KeyHasher(pepper), cache_s=settings.auth.key_cache_s)


def key_view(key: KeyRecord) -> dict[str, Any]:
    """A key's record as shown to people: everything but its hash."""
    return {
        "id": key.id,
        "name": key.name,
        "prefix": key.prefix,
        "team_id": key.team_id,
        "models": None if key.models is None else list(key.models),
        "rpm": key.rpm,
        "tpm": key.tpm,
        "max_tokens": key.max_tokens,
        "max_prompt_tokens": key.max_prompt_tokens,
        "guards": key.guards,
        "admin": key.admin,
        "created_by": key.created_by,
        "created_at": key.created_at.isoformat(),
        "expires_at": None if key.expires_at is None else key.expires_at.isoformat(),
        "revoked_at": None if key.revoked_at is None else key.revoked_at.isoformat(),
    }
