"""Dynamic batching for embedding models: one forward pass serves many waiting requests.

Requests wait in a heap ordered by (priority, arrival), bounded by ``max_waiting`` (one more
is a 429). A dispatcher leases a free worker from the model's ``AdmissionQueue`` and sends
it every waiting request that fits in ``max_batch_inputs`` (at least one), so under load a
worker encodes 32 sentences in about the time of a few. If a batch fails on a client error
(an input too long, say), its requests are retried one by one on the same worker so each
client gets its own answer. A request cancelled while waiting (deadline, disconnect) is
skipped; one cancelled after dispatch just has its rows dropped.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

import numpy as np
import structlog

from shipway.backends.base import EmbedRequest, EmbedResult
from shipway.engine.admission import AdmissionQueue, Priority, Slot
from shipway.errors import DeadlineExceeded, InvalidRequest, ShipwayError
from shipway.telemetry.metrics import Metrics

__all__ = ["EmbeddingBatcher"]


@dataclass(order=True)
class _Waiting:
    priority: int
    seq: int
    request: EmbedRequest = field(compare=False)
    future: asyncio.Future[EmbedResult] = field(compare=False)
    enqueued: float = field(compare=False)
    deadline: float = field(compare=False)
    dispatched: bool = field(default=False, compare=False)


class EmbeddingBatcher:
    def __init__(
        self,
        model: str,
        queue: AdmissionQueue,
        *,
        max_waiting: int,
        max_batch_inputs: int,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model = model
        self._queue = queue
        self.max_waiting = max_waiting
        self._max_batch_inputs = max_batch_inputs
        self._metrics = metrics
        self._clock = clock
        self._heap: list[_Waiting] = []
        self._seq = itertools.count()
        self._waiting = 0
        self._dispatcher: asyncio.Task[None] | None = None
        self._batches: set[asyncio.Task[None]] = set()

    @property
    def waiting(self) -> int:
        return self._waiting

    async def embed(
        self, request: EmbedRequest, priority: Priority, deadline: float
    ) -> EmbedResult:
        """Embed as part of the next batch; ``deadline`` is event-loop time."""
        if self._waiting >= self.max_waiting:
            raise self._queue.refuse(self.max_waiting)
        future: asyncio.Future[EmbedResult] = asyncio.get_running_loop().create_future()
        entry = _Waiting(int(priority), next(self._seq), request, future, self._clock(), deadline)
        heapq.heappush(self._heap, entry)
        self._set_waiting(+1)
        self._wake_dispatcher()
        try:
            return await future
        finally:
            if not entry.dispatched:  # cancelled (deadline, disconnect) before a worker took it
                entry.dispatched = True
                future.cancel()
                self._set_waiting(-1)

    async def stop(self) -> None:
        tasks = [t for t in (self._dispatcher, *self._batches) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _set_waiting(self, delta: int) -> None:
        self._waiting += delta
        self._metrics.queue_depth.labels(self.model).set(self._waiting)

    def _drop_cancelled(self) -> None:
        while self._heap and self._heap[0].future.done():
            heapq.heappop(self._heap)

    async def _dispatch(self) -> None:
        while True:
            self._drop_cancelled()
            if not self._heap:
                return
            lease = self._queue.lease(Priority(self._heap[0].priority))
            slot = await lease.__aenter__()
            batch = self._take_batch()
            task = asyncio.create_task(self._run(lease, slot, batch))
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)

    def _wake_dispatcher(self) -> None:
        if self._dispatcher is None or self._dispatcher.done():
            self._dispatcher = asyncio.create_task(self._dispatch(), name=f"batcher:{self.model}")

    def _requeue(self, entries: list[_Waiting]) -> None:
        """Put dispatched but unanswered requests back to wait for the next free worker."""
        for entry in entries:
            if not entry.future.done():
                entry.dispatched = False
                heapq.heappush(self._heap, entry)
                self._set_waiting(+1)
        self._wake_dispatcher()

    def _take_batch(self) -> list[_Waiting]:
        batch: list[_Waiting] = []
        inputs = 0
        dimensions: int | None = None
        skipped: list[_Waiting] = []
        while self._heap:
            entry = heapq.heappop(self._heap)
            if entry.future.done():
                continue
            size = len(entry.request.inputs)
            fits = inputs + size <= self._max_batch_inputs
            if batch and (not fits or entry.request.dimensions != dimensions):
                skipped.append(entry)
                if not fits:
                    break
                continue
            dimensions = entry.request.dimensions
            batch.append(entry)
            inputs += size
        for entry in skipped:
            heapq.heappush(self._heap, entry)
        now = self._clock()
        for entry in batch:
            entry.dispatched = True
            self._set_waiting(-1)
            self._metrics.queue_wait.labels(self.model).observe(now - entry.enqueued)
        return batch

    async def _run(
        self, lease: AbstractAsyncContextManager[Slot], slot: Slot, batch: list[_Waiting]
    ) -> None:
        try:
            if batch:
                await self._encode(slot, batch)
        except Exception as exc:  # noqa: BLE001 - a bug, not a client error: settle all, log it
            _settle_all(batch, ShipwayError(f"embedding failed: {type(exc).__name__}"))
            structlog.get_logger("shipway.batcher").error(
                "embedding batch failed", model=self.model, exc_info=exc
            )
        finally:
            await lease.__aexit__(None, None, None)

    async def _encode(self, slot: Slot, batch: list[_Waiting]) -> None:
        merged = EmbedRequest(
            inputs=[text for entry in batch for text in entry.request.inputs],
            dimensions=batch[0].request.dimensions,
        )
        try:
            # Past the last client's deadline nobody waits for this batch: cancelling it tells
            # the worker to stop, and a worker that does not is killed (cancel_grace_s).
            async with asyncio.timeout_at(max(entry.deadline for entry in batch)):
                result = await slot.backend.embed(merged)
        except InvalidRequest as exc:
            if len(batch) == 1:
                _settle(batch[0], exc)
            else:  # find whose input it was: each client gets its own answer
                for i, entry in enumerate(batch):
                    if not slot.ready:  # a solo run timed out and the worker is stopping
                        self._requeue(batch[i:])
                        return
                    await _encode_alone(slot, entry)
            return
        except ShipwayError as exc:
            _settle_all(batch, exc)
            return
        except TimeoutError:
            _settle_all(batch, DeadlineExceeded("the embedding batch ran past every deadline"))
            return
        counts = result.token_counts or [0] * len(merged.inputs)
        start = 0
        for entry in batch:
            end = start + len(entry.request.inputs)
            if not entry.future.done():
                entry.future.set_result(
                    EmbedResult(
                        np.ascontiguousarray(result.vectors[start:end]),
                        sum(counts[start:end]),
                        counts[start:end],
                    )
                )
            start = end


async def _encode_alone(slot: Slot, entry: _Waiting) -> None:
    if entry.future.done():
        return
    try:
        async with asyncio.timeout_at(entry.deadline):
            entry.future.set_result(await slot.backend.embed(entry.request))
    except ShipwayError as exc:
        _settle(entry, exc)
    except TimeoutError:
        _settle(entry, DeadlineExceeded("the embedding ran past its deadline"))


def _settle(entry: _Waiting, error: ShipwayError) -> None:
    if not entry.future.done():
        entry.future.set_exception(error)


def _settle_all(batch: list[_Waiting], error: ShipwayError) -> None:
    for entry in batch:
        _settle(entry, error)
