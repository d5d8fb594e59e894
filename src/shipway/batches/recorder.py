"""Line answers written in group commits: one transaction per group, not per line.

Each answer is still written by its own conditional update (store/batches.py
``record_line``), so it counts once whatever group it lands in; a group whose transaction
fails writes none of its answers, and those lines run again when their leases run out.
Answers that arrive while a transaction runs go into the next one, so under load a commit
(a few milliseconds on SQLite) carries many lines, and alone a line waits for no timer.
"""

from __future__ import annotations

import asyncio

from shipway.store import Database
from shipway.store import batches as store

__all__ = ["Recorder"]

_Entry = tuple[store.ClaimedLine, store.LineOutcome, "asyncio.Future[bool]"]


class Recorder:
    def __init__(self, database: Database) -> None:
        self._db = database
        self._pending: list[_Entry] = []
        self._writer: asyncio.Task[None] | None = None

    async def record(self, line: store.ClaimedLine, outcome: store.LineOutcome) -> bool:
        """Write the answer; False if the line was answered already or its batch stopped."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((line, outcome, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write(), name="batch-recorder")
        return await future

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)

    async def _write(self) -> None:
        while self._pending:
            group, self._pending = self._pending, []
            try:
                async with self._db.transaction() as session:
                    written = [
                        await store.record_line(session, line.batch_id, line.line_no, outcome)
                        for line, outcome, _ in group
                    ]
            except BaseException as exc:
                for _, _, future in group:
                    if not future.done():
                        future.set_exception(exc)
                        future.exception()  # retrieved: its waiter may have been cancelled
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            for (_, _, future), ok in zip(group, written, strict=True):
                if not future.done():
                    future.set_result(ok)
