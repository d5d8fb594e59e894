"""``CostLedger``: every finished request's cost, written to the store off the request path.

``record`` is called once per finished request, so it only appends to a list in memory; a
background task writes what has gathered every ``flush_interval_s`` in one multi-row
INSERT (``SpendStore.append``), and ``stop`` writes what is left, so a clean shutdown loses
nothing. While the database cannot be reached rows wait in memory (at most
``max_pending``; past that the oldest are dropped, counted in ``dropped`` and logged once
per episode) and are written when it answers again. Rows the database refuses are dropped
and counted the same way, so they cannot hold back the rows behind them. The writer has the
audit log's shape (security/audit.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

import structlog
from sqlalchemy.exc import SQLAlchemyError

from shipway.errors import StoreUnavailable
from shipway.store.spend import CallCost, SpendStore

__all__ = ["CallCost", "CostLedger"]

# Rows per transaction: large enough that a busy second is a few INSERTs, small enough
# that one batch's parameters are a few milliseconds of the event loop.
_BATCH = 1000


class CostLedger:
    def __init__(
        self,
        spend: SpendStore,
        *,
        flush_interval_s: float = 1.0,
        max_pending: int = 100_000,
    ) -> None:
        self.dropped = 0
        """Rows dropped because the database was down for too long."""
        self._spend = spend
        self._interval = flush_interval_s
        self._max_pending = max_pending
        self._pending: deque[CallCost] = deque()
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._flushing = asyncio.Lock()
        self._failing = False
        self._dropping = False
        self._log = structlog.get_logger("shipway.costs")

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def start(self) -> None:
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name="cost-ledger-writer")

    def record(self, cost: CallCost) -> None:
        """Queue one request's cost; never blocks, never raises."""
        pending = self._pending
        if len(pending) >= self._max_pending:
            pending.popleft()
            self._dropped(1)
        pending.append(cost)

    async def flush(self) -> None:
        """Write every row queued so far; ``StoreUnavailable`` if the database cannot be
        reached (the rows stay queued). Rows it refuses are dropped, counted and logged."""
        async with self._flushing:
            while self._pending:
                count = min(_BATCH, len(self._pending))
                batch = [self._pending.popleft() for _ in range(count)]
                try:
                    await self._spend.append(batch)
                except (StoreUnavailable, asyncio.CancelledError):
                    # Database away or writer cancelled: back in front, in order.
                    self._pending.extendleft(reversed(batch))
                    self._trim()
                    raise
                except (SQLAlchemyError, ValueError, TypeError):
                    # The database refused these rows: writing them again would fail
                    # again and hold back every row behind them.
                    self._log.exception("request costs refused by the database; dropped")
                    self.dropped += len(batch)
                    continue
                self._dropping = False

    async def stop(self) -> None:
        """Stop the writer and write what is left (logged, not raised, if that fails)."""
        if self._task is not None:
            self._stopping.set()
            await self._task
            self._task = None
        try:
            await self.flush()
        except StoreUnavailable as exc:
            self._log.error(
                "request costs lost at shutdown: the database cannot be written",
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
            except StoreUnavailable as exc:
                # Kept for the next round; one warning per outage, not one per interval.
                if not self._failing:
                    self._log.warning(
                        "request costs cannot be written; keeping them in memory and retrying",
                        pending=len(self._pending),
                        error=str(exc),
                    )
                self._failing = True
            except Exception:  # noqa: BLE001 - a bug must not end the writer: rows would pile up
                if not self._failing:
                    self._log.exception("cost ledger writer failed; retrying")
                self._failing = True
            else:
                if self._failing:
                    self._log.info("request costs written again after an outage")
                self._failing = False

    def _trim(self) -> None:
        excess = len(self._pending) - self._max_pending
        if excess > 0:
            for _ in range(excess):
                self._pending.popleft()
            self._dropped(excess)

    def _dropped(self, count: int) -> None:
        if not self._dropping:  # once per episode: this runs on the request path
            self._log.error(
                "cost ledger queue is full: dropping the oldest request costs",
                max_pending=self._max_pending,
                dropped_so_far=self.dropped,
            )
            self._dropping = True
        self.dropped += count
