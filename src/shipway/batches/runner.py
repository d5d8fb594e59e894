"""The batch runner: lines of running batches, in order, through the pipeline, when idle.

One loop, woken when a batch is made or cancelled and when a line ends (else every second):

- batches move on: all lines answered → ``finalizing`` → ``completed`` with their files;
  ``cancelling`` with nothing of it in flight here → ``cancelled``; past ``expires_at`` →
  ``expired``; its key revoked → ``failed``;
- lines are leased from the store (oldest batch first, line order), at most
  ``batches.concurrency`` running here and a few more leased ahead, the leases renewed while
  held;
- a line is started only while its model has a free slot and no request waiting for one, so
  interactive requests never queue behind batch lines and lines do not fill the queue's
  ``max_waiting``; once started it runs at ``Priority.BATCH``, behind any interactive request
  that arrives meanwhile. (Between the check and the line reaching the queue another request
  may take the slot: then at most ``batches.concurrency`` lines wait there, last in line.)

A line's answer is written once (store/batches.py); one cut short by a stop or a crash stays
``pending`` and runs again, here after a restart or on another replica.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import structlog

from shipway.batches.executor import LineExecutor, Retry
from shipway.batches.finalize import finish
from shipway.batches.owners import PrincipalCache, is_dead_here, runner_name
from shipway.batches.recorder import Recorder
from shipway.engine.engine import Engine
from shipway.errors import StoreUnavailable
from shipway.store import Database
from shipway.store import batches as store

__all__ = ["BatchRunner"]

_LEASE = timedelta(seconds=60)
_RENEW_EVERY_S = 20.0
_IDLE_POLL_S = 1.0
# Lines leased beyond those that can run at once, so a line ending starts the next without a
# trip to the store; few enough that other replicas still find work.
_CLAIM_AHEAD = 16
_BLOCKED_POLL_S = 0.05  # a line waits for a model's slot: look again soon
_MAX_ATTEMPTS = 5
_MAX_BACKOFF_S = 60.0
REVOKED = {
    "object": "list",
    "data": [
        {
            "code": "invalid_api_key",
            "message": "the API key that created this batch is no longer valid (revoked or "
            "expired; or, for a batch made on an open server, API keys exist now)",
            "param": None,
            "line": None,
        }
    ],
}


@dataclass(frozen=True, slots=True)
class _Batch:
    """What a line needs of its batch to run."""

    endpoint: str
    owner_key_id: int | None


@dataclass(slots=True)
class _Held:
    line: store.ClaimedLine
    attempts: int = 0
    not_before: float = 0.0
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class BatchRunner:
    def __init__(
        self,
        database: Database,
        executor: LineExecutor,
        engine: Engine,
        principals: PrincipalCache,
        *,
        concurrency: int,
    ) -> None:
        self._db = database
        self._executor = executor
        self._engine = engine
        self._principals = principals
        self._recorder = Recorder(database)
        self._concurrency = concurrency
        self._name = runner_name()
        self._held: deque[_Held] = deque()  # leased, waiting to start, in order
        self._running: dict[tuple[str, int], _Held] = {}
        self._batches: dict[str, _Batch] = {}  # the running batches, as of the last pass
        self._wake = asyncio.Event()
        self._reread = True  # read the store on the next wake (else only start held lines)
        self._tasks: list[asyncio.Task[None]] = []
        self._log = structlog.get_logger("shipway.batches")

    async def start(self) -> None:
        async with self._db.transaction() as session:
            dead = [owner for owner in await store.lease_owners(session) if is_dead_here(owner)]
            await store.release_leases(session, dead)
        if dead:
            self._log.info("batch lines of a stopped runner released", runners=dead)
        self._tasks = [
            asyncio.create_task(self._loop(), name="batch-runner"),
            asyncio.create_task(self._renew(), name="batch-leases"),
        ]

    async def stop(self) -> None:
        """Stop at once: lines in flight are cancelled and stay pending, their leases freed."""
        running = [held.task for held in self._running.values() if held.task is not None]
        for task in [*self._tasks, *running]:
            task.cancel()
        await asyncio.gather(*self._tasks, *running, return_exceptions=True)
        await self._recorder.close()
        with contextlib.suppress(StoreUnavailable):
            async with self._db.transaction() as session:
                await store.release_leases(session, [self._name])

    def wake(self) -> None:
        """Something changed in the store (a batch made or cancelled): look now."""
        self._reread = True
        self._wake.set()

    async def _loop(self) -> None:
        clock = asyncio.get_running_loop().time
        last_pass = -_IDLE_POLL_S
        while True:
            wait_s = _IDLE_POLL_S
            try:
                # The store is read when something happened or every second; in between,
                # held lines are only offered to their models again.
                self._wake.clear()
                if self._reread or clock() - last_pass >= _IDLE_POLL_S:
                    self._reread = False
                    last_pass = clock()
                    await self._pass()
                wait_s = self._start_lines()
            except StoreUnavailable as exc:
                self._log.warning("batch runner cannot reach the store", error=str(exc))
            except Exception as exc:  # noqa: BLE001 - the loop must outlive any one batch
                self._log.error("batch runner pass failed", exc_info=exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait_s)

    async def _pass(self) -> None:
        """Move batches on, forget lines of stopped ones, lease more lines if there is room."""
        now = datetime.now(UTC)
        async with self._db.transaction() as session:
            batches = await store.active_batches(session)
        self._batches = {}
        for batch in batches:
            try:
                if await self._advance(batch, now):
                    self._batches[batch.id] = _Batch(batch.endpoint, batch.owner_key_id)
            except Exception as exc:  # noqa: BLE001 - one batch must not stop the others
                self._log.error("batch not moved on", batch_id=batch.id, exc_info=exc)
        self._held = deque(h for h in self._held if h.line.batch_id in self._batches)
        room = 0
        if len(self._held) < self._concurrency:
            room = self._concurrency + _CLAIM_AHEAD - len(self._held) - len(self._running)
        for batch_id in self._batches:
            if room <= 0:
                break
            async with self._db.transaction() as session:
                claimed = await store.claim_lines(
                    session, batch_id, owner=self._name, now=now, until=now + _LEASE, limit=room
                )
            self._held.extend(_Held(line) for line in claimed)
            room -= len(claimed)

    async def _advance(self, batch: store.BatchRecord, now: datetime) -> bool:
        """Move the batch on if it is done; True if its lines should keep running."""
        in_flight = any(key[0] == batch.id for key in self._running)
        if batch.status == "finalizing":
            await finish(self._db, batch.id, ("finalizing",), "completed", now)
        elif now >= batch.expires_at:
            if not in_flight:
                await finish(self._db, batch.id, ("in_progress", "cancelling"), "expired", now)
        elif batch.status == "cancelling":
            if not in_flight:
                await finish(self._db, batch.id, ("cancelling",), "cancelled", now)
        elif batch.completed + batch.failed >= batch.total:
            async with self._db.transaction() as session:
                moved = await store.move(session, batch.id, ("in_progress",), "finalizing", now)
            if moved:
                await finish(self._db, batch.id, ("finalizing",), "completed", now)
        elif await self._principals.get(batch.owner_key_id) is None:
            async with self._db.transaction() as session:
                await store.move(session, batch.id, ("in_progress",), "failed", now, errors=REVOKED)
        else:
            return True
        return False

    def _start_lines(self) -> float:
        """Start the held lines whose model is free; the seconds until it is worth looking
        again (soon while a line waits for its model, else when a backoff ends)."""
        now = asyncio.get_running_loop().time()
        starting: Counter[str] = Counter()
        wait_s = _IDLE_POLL_S
        for held in list(self._held):
            if len(self._running) >= self._concurrency:
                break
            model = held.line.model
            if held.not_before > now:
                wait_s = min(wait_s, held.not_before - now)
                continue
            if not self._model_free(model, starting[model]):
                wait_s = _BLOCKED_POLL_S
                continue
            starting[model] += 1
            self._held.remove(held)
            self._running[(held.line.batch_id, held.line.line_no)] = held
            held.task = asyncio.create_task(self._run(held, self._batches[held.line.batch_id]))
        return wait_s

    def _model_free(self, model: str, starting: int) -> bool:
        runner = self._engine.runners.get(model)
        if runner is None:  # a named route: the pipeline chooses the model
            return True
        return runner.waiting == 0 and runner.queue.idle > starting

    async def _run(self, held: _Held, batch: _Batch) -> None:
        line = held.line
        try:
            principal = await self._principals.get(batch.owner_key_id)
            if principal is None:
                return  # the batch fails on the next pass
            try:
                outcome = await self._executor.run(line, batch.endpoint, principal)
            except Retry as retry:
                held.attempts += 1
                if held.attempts < _MAX_ATTEMPTS:
                    backoff = retry.after_s or float(2**held.attempts)
                    held.not_before = asyncio.get_running_loop().time() + min(
                        backoff, _MAX_BACKOFF_S
                    )
                    held.task = None
                    self._held.appendleft(held)
                    return
                outcome = retry.outcome
            await self._recorder.record(line, outcome)
        except Exception as exc:  # noqa: BLE001 - the store refused the answer; logged
            # Not written: the lease runs out and the line runs again.
            self._log.warning(
                "batch line not recorded", batch_id=line.batch_id, line=line.line_no, exc_info=exc
            )
        finally:
            del self._running[(line.batch_id, line.line_no)]
            # Its batch may be done, or more lines may be needed: read the store then.
            if len(self._held) < self._concurrency:
                self._reread = True
            self._wake.set()

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(_RENEW_EVERY_S)
            if not (self._held or self._running):
                continue
            try:
                async with self._db.transaction() as session:
                    await store.renew_leases(session, self._name, datetime.now(UTC) + _LEASE)
            except StoreUnavailable as exc:
                self._log.warning("batch leases not renewed", error=str(exc))
