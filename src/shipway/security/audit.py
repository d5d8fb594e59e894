"""``AuditLog``: every request and admin action, appended to the hash chain in the store.

``record`` is called on the hot path of every request, so it only appends to a list in
memory (about a microsecond); a background task writes what has gathered every
``audit.flush_interval_s``, in one transaction, through ``store.audit.append``. ``stop``
writes what is left, so a clean shutdown loses nothing. While the database is down records
wait in memory (at most ``max_pending``; past that the oldest are dropped, counted in
``dropped`` and logged) and are written when it answers again.

Record kinds and who writes them:

    request             one per HTTP request, refused ones included (api/middleware.py)
    admin.key.create    an API key made, by the admin API or `shipway keys create`
    admin.key.revoke    a key revoked
    admin.key.rotate    a key replaced by a new one (``replaced``: the old key's id)
    admin.team.create   a team made

``data`` is a free JSON object; the key ``content`` is the log's own: with
``audit.store_content`` on, the ``content`` passed to ``record`` (prompt and answer) is
encrypted (``audit_crypto.py``) and kept there, and the chain's HMAC covers the ciphertext.
With it off, ``content`` is dropped unread.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy.exc import SQLAlchemyError

from shipway.config import ShipwaySettings
from shipway.errors import ConfigError, Conflict, StoreUnavailable
from shipway.security.audit_crypto import ContentKeys, associated_data
from shipway.security.secrets import resolve_secret
from shipway.store.audit import AuditEntry, append
from shipway.store.database import Database

__all__ = ["HMAC_KEY_FILE", "AuditLog", "chain_key", "decrypt_content"]

HMAC_KEY_FILE = "audit-hmac.key"
# Rows per transaction: each batch is made ready (JSON, encryption) on the event loop, so
# a batch stays a few milliseconds of work.
_BATCH = 500
# Appends lost to another writer (SQLite) before the batch waits for the next interval.
_CONFLICT_RETRIES = 8

# (time.time(), kind, principal, request_id, data, content)
_Pending = tuple[float, str, str | None, str | None, Mapping[str, Any], Mapping[str, Any] | None]


def chain_key(
    settings: ShipwaySettings, environ: Mapping[str, str], *, create: bool = True
) -> bytes:
    """The HMAC key of the chain: the environment's, or the one kept in ``data_dir``.

    ``create=False`` (verifying) refuses to make a new key: a new key would report the
    first record as edited instead of saying the key is missing.
    """
    env_name = settings.audit.hmac_key_env
    kept = settings.data_dir / HMAC_KEY_FILE
    if not create and not environ.get(env_name):
        url = settings.database_url
        if url and not url.startswith("sqlite"):
            raise ConfigError(f"no audit HMAC key: set {env_name} to the key the servers use")
        if not kept.exists():
            raise ConfigError(
                f"no audit HMAC key: {env_name} is not set and {kept} does not exist; set "
                f"{env_name} to the key the server uses, or run where its data_dir is"
            )
    return resolve_secret(settings, env_name, HMAC_KEY_FILE, environ)


def decrypt_content(keys: ContentKeys, record: Mapping[str, Any]) -> Any:
    """The prompt and answer kept in an audit row (a mapping of its columns), or None."""
    sealed = record["data"].get("content")
    if sealed is None:
        return None
    associated = associated_data(
        record["kind"], record["principal"], record["request_id"], record["at"]
    )
    return keys.decrypt(sealed, associated)


class AuditLog:
    def __init__(
        self,
        database: Database,
        settings: ShipwaySettings,
        environ: Mapping[str, str],
        *,
        max_pending: int = 100_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.enabled = settings.audit.enabled
        self.dropped = 0
        """Records dropped because the database was down for too long."""
        self._database = database
        self._settings = settings
        self._environ = environ
        self._interval = settings.audit.flush_interval_s
        self._max_pending = max_pending
        self._clock = clock
        self._pending: deque[_Pending] = deque()
        self._key = b""
        self._content: ContentKeys | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._flushing = asyncio.Lock()
        self._failing = False
        self._dropping = False
        self._log = structlog.get_logger("shipway.audit")

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def start(self) -> None:
        """Resolve the keys (``ConfigError`` if they are missing or bad) and start writing."""
        if not self.enabled:
            return
        audit = self._settings.audit
        self._key = chain_key(self._settings, self._environ)
        if audit.store_content:
            self._content = ContentKeys.from_environ(self._environ, audit.encryption_keys_env)
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name="audit-log-writer")

    def record(
        self,
        kind: str,
        *,
        principal: str | None,
        request_id: str | None,
        data: Mapping[str, Any],
        content: Mapping[str, Any] | None = None,
    ) -> None:
        """Queue a record; never blocks. The log owns ``data`` and ``content`` from now on:
        do not change them afterwards."""
        if not self.enabled:
            return
        pending = self._pending
        if len(pending) >= self._max_pending:
            pending.popleft()
            self._dropped(1)
        pending.append((self._clock(), kind, principal, request_id, data, content))

    async def flush(self) -> None:
        """Write every record queued so far; ``StoreUnavailable`` if the database is down
        (the records stay queued)."""
        # One writer per process: batches reach the chain in the order they were recorded.
        async with self._flushing:
            while self._pending:
                count = min(_BATCH, len(self._pending))
                batch = [self._pending.popleft() for _ in range(count)]
                try:
                    await self._write(batch)
                except BaseException:
                    # Cancelled or failed: the batch goes back in front, in order.
                    self._pending.extendleft(reversed(batch))
                    self._trim()
                    raise
                self._dropping = False

    async def stop(self) -> None:
        """Stop the writer and write what is left (logged, not raised, if that fails)."""
        if self._task is None:
            return
        self._stopping.set()
        await self._task
        self._task = None
        try:
            await self.flush()
        except (StoreUnavailable, SQLAlchemyError) as exc:
            self._log.error(
                "audit records lost at shutdown: the database cannot be written",
                lost=len(self._pending),
                error=str(exc),
            )

    async def _run(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._interval)
            if self._stopping.is_set():
                return  # stop() writes the rest itself
            try:
                await self.flush()
            except (StoreUnavailable, SQLAlchemyError) as exc:
                # Kept for the next round; one warning per outage, not one per interval.
                if not self._failing:
                    self._log.warning(
                        "audit log cannot be written; keeping records in memory and retrying",
                        pending=len(self._pending),
                        error=str(exc),
                    )
                self._failing = True
            except Exception:  # noqa: BLE001 - a bug must not end the writer: records would pile up
                if not self._failing:
                    self._log.exception("audit log writer failed; retrying")
                self._failing = True
            else:
                if self._failing:
                    self._log.info("audit log written again after an outage")
                self._failing = False

    async def _write(self, batch: list[_Pending]) -> None:
        for attempt in range(_CONFLICT_RETRIES):
            entries = [self._entry(item) for item in batch]
            try:
                async with self._database.transaction() as session:
                    await append(session, entries, self._key)
                return
            except Conflict:
                # Another process appended first (SQLite): read the new head and go again.
                await asyncio.sleep(random.uniform(0, 0.005 * (attempt + 1)))
        raise StoreUnavailable(
            f"audit log: another writer won {_CONFLICT_RETRIES} appends in a row; retrying later"
        )

    def _entry(self, item: _Pending) -> AuditEntry:
        stamp, kind, principal, request_id, data, content = item
        at = datetime.fromtimestamp(stamp, UTC)
        try:
            if self._content is not None and content is not None:
                # Bound to the fields as stored, cut to their columns.
                bare = AuditEntry.of(at, kind, principal, request_id, {})
                associated = associated_data(bare.kind, bare.principal, bare.request_id, at)
                data = {**data, "content": self._content.encrypt(content, associated)}
            return AuditEntry.of(at, kind, principal, request_id, data)
        except ValueError as exc:
            # Keep the fact that it happened even when its details cannot be stored.
            self._log.error("audit record data is not JSON; storing its kind only", kind=kind)
            return AuditEntry.of(at, kind, principal, request_id, {"unrecordable": str(exc)})

    def _trim(self) -> None:
        excess = len(self._pending) - self._max_pending
        if excess > 0:
            for _ in range(excess):
                self._pending.popleft()
            self._dropped(excess)

    def _dropped(self, count: int) -> None:
        if not self._dropping:  # once per episode: this runs on the request path
            self._log.error(
                "audit log queue is full: dropping the oldest records",
                max_pending=self._max_pending,
                dropped_so_far=self.dropped,
            )
            self._dropping = True
        self.dropped += count
